#!/usr/bin/env bash
# Build the pinned Hyperledger Fabric binaries with the Go toolchain from the module proxy.
#
# The pin lives in deploy/fabric/tools/go.mod (+ go.sum): one reviewed file. Binaries go to
#   ${BCFL_CACHE:-~/.cache/bcfl}/fabric/<pin>/bin
# together with Fabric's sample configuration of the same commit (…/<pin>/config), which the
# network bring-up uses as the base of its core.yaml / orderer.yaml. A cache that is already
# complete is reused; pass --force to rebuild.
#
# Prints the bin directory on the last line of stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="$HERE/tools"
FABRIC_MODULE=github.com/hyperledger/fabric
FABRIC_RELEASE=3.1.1   # the release tag the pinned commit carries
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

command -v go >/dev/null || { echo "build-binaries: the Go toolchain (go >= 1.24) is required" >&2; exit 2; }

PSEUDO="$(sed -n -E "s#^[[:space:]]*(require[[:space:]]+)?$FABRIC_MODULE[[:space:]]+(v[^[:space:]]+).*#\2#p" "$TOOLS/go.mod" | head -n1)"
[[ -n "$PSEUDO" ]] || { echo "build-binaries: $TOOLS/go.mod does not require $FABRIC_MODULE" >&2; exit 2; }
COMMIT="${PSEUDO##*-}"
PIN="v${FABRIC_RELEASE}-${COMMIT}"
CACHE_ROOT="${BCFL_CACHE:-$HOME/.cache/bcfl}"
DEST="$CACHE_ROOT/fabric/$PIN"
BIN="$DEST/bin"
TOOLS_LIST=(peer orderer configtxgen configtxlator osnadmin cryptogen)

complete() {
  [[ -f "$DEST/.complete" ]] || return 1
  for t in "${TOOLS_LIST[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
  [[ -f "$DEST/config/core.yaml" && -f "$DEST/config/orderer.yaml" ]]
}

if [[ $FORCE -eq 0 ]] && complete; then
  echo "build-binaries: using cached Fabric $PIN in $BIN" >&2
  echo "$BIN"
  exit 0
fi

echo "build-binaries: building Fabric $FABRIC_RELEASE ($PSEUDO) into $BIN with $(go version)" >&2
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/bin" "$DEST.tmp/config"
start=$(date +%s)
(
  cd "$TOOLS"
  export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED="${CGO_ENABLED:-1}"
  GOBIN="$DEST.tmp/bin" go install -trimpath \
    -ldflags "-X $FABRIC_MODULE/common/metadata.Version=$FABRIC_RELEASE -X $FABRIC_MODULE/common/metadata.CommitSHA=$COMMIT" \
    tool
  # Fabric's own sample configuration of the same commit, as the base for the network's configs.
  src="$(go list -m -f '{{.Dir}}' "$FABRIC_MODULE")"
  cp "$src/sampleconfig/core.yaml" "$src/sampleconfig/orderer.yaml" "$src/sampleconfig/configtx.yaml" "$DEST.tmp/config/"
  chmod u+w "$DEST.tmp/config/"*
)
# the `tool` meta-package installs one binary per tool line; check they are all there
for t in "${TOOLS_LIST[@]}"; do
  [[ -x "$DEST.tmp/bin/$t" ]] || { echo "build-binaries: $t was not built" >&2; exit 1; }
done
printf '%s\n' "module=$FABRIC_MODULE" "version=$PSEUDO" "release=$FABRIC_RELEASE" \
  "go=$(go env GOVERSION)" "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "seconds=$(( $(date +%s) - start ))" \
  > "$DEST.tmp/.complete"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "build-binaries: done in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
