#!/bin/sh
# Runs Shoal's whole test suite (formatting, lints, unit, integration and conformance tests).
# Usage, as root on Debian: ./scripts/test.sh
set -eu
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
# Builds are kept outside the checkout so a reused machine builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace --no-fail-fast
