#!/usr/bin/env bash
# Install the pinned Ethereum toolchain (solc-js, OpenZeppelin Contracts, anvil) from the npm registry
# into a cache outside the clone, keyed by the lock file, and print the cache directory.
#
#   deploy/ethereum/install.sh            -> prints e.g. ~/.cache/bcfl/npm-eth/3f1c.../
#   BCFL_CACHE=/somewhere deploy/ethereum/install.sh
#
# The cache is reused when present; a half-finished install is never used (it is built in a
# temporary directory and renamed into place). Nothing is downloaded at run time: the anvil binary
# ships inside @foundry-rs/anvil-linux-amd64, so install scripts are not run (--ignore-scripts).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
contracts="$(cd "$here/../../contracts" && pwd)"
cache_root="${BCFL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bcfl}/npm-eth"

command -v npm >/dev/null || { echo "install.sh: npm not found; install Node.js >= 20 and npm" >&2; exit 2; }
[ -f "$contracts/package-lock.json" ] || { echo "install.sh: $contracts/package-lock.json is missing" >&2; exit 2; }

key="$(cat "$contracts/package.json" "$contracts/package-lock.json" | sha256sum | cut -c1-16)"
dest="$cache_root/$key"

check() {
  local dir="$1"
  [ -f "$dir/node_modules/solc/soljson.js" ] || { echo "install.sh: solc missing in $dir" >&2; return 1; }
  [ -f "$dir/node_modules/@openzeppelin/contracts/package.json" ] || { echo "install.sh: @openzeppelin/contracts missing in $dir" >&2; return 1; }
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    "$dir/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" --version >/dev/null \
      || { echo "install.sh: the anvil binary in $dir does not run" >&2; return 1; }
  fi
}

if [ -f "$dest/.complete" ] && check "$dest" 2>/dev/null; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache_root"
tmp="$(mktemp -d "$cache_root/.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp "$contracts/package.json" "$contracts/package-lock.json" "$tmp/"
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
check "$tmp"
touch "$tmp/.complete"
if [ -e "$dest" ]; then
  if [ -f "$dest/.complete" ] && check "$dest" 2>/dev/null; then
    # Another installer finished first; its copy is as good as ours.
    echo "$dest"
    exit 0
  fi
  rm -rf "$dest"   # a broken copy from an interrupted older installer
fi
mv -T "$tmp" "$dest" || { [ -f "$dest/.complete" ] || exit 1; }
trap - EXIT
rm -rf "$tmp"
echo "$dest"
