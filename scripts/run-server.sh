#!/bin/sh
# Builds Shoal and starts a single-node server on the embedded store, as root on Debian.
# Usage: ./scripts/run-server.sh [extra `shoal server` flags]
set -eu
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
cargo build --locked --release -p shoal
exec "$CARGO_TARGET_DIR/release/shoal" server "$@"
