#!/usr/bin/env bash
# Start anvil from the pinned npm package on loopback (foreground; Ctrl-C stops it).
#
#   deploy/ethereum/start-anvil.sh [PORT] [more anvil options...]
#   BCFL_CHAIN_ID=31337 (default)   BCFL_ANVIL_HOST=127.0.0.1 (default)
#
# Without --state FILE the chain lives in memory: a restart is a fresh chain, which the settlement
# client detects and refuses (SETTLEMENT_CHAIN_CHANGED). Pass --state FILE to keep it across restarts.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
toolchain="$("$here/install.sh")"
anvil="${BCFL_ANVIL:-$toolchain/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil}"
[ -x "$anvil" ] || { echo "start-anvil.sh: no anvil binary at $anvil (linux x86_64 only; set BCFL_ANVIL)" >&2; exit 2; }
port="${1:-8545}"
[ $# -gt 0 ] && shift
exec "$anvil" --host "${BCFL_ANVIL_HOST:-127.0.0.1}" --port "$port" --chain-id "${BCFL_CHAIN_ID:-31337}" "$@"
