#!/bin/sh
# Regenerates agent/src/cri/runtime.v1.rs, the CRI v1 gRPC client, from agent/src/cri/api.proto
# (Kubernetes' cri-api `runtime/v1/api.proto`). The generated code is committed so that building
# Shoal needs no protoc; this script needs protoc (Debian: protobuf-compiler) and cargo.
set -eu
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/proto" "$work/gen"
cp "$repo/agent/src/cri/api.proto" "$work/proto/api.proto"
cat >"$work/Cargo.toml" <<'TOML'
[package]
name = "cri-gen"
version = "0.0.0"
edition = "2021"
[dependencies]
prost = "0.13"
tonic = { version = "0.12", default-features = false, features = ["codegen", "prost"] }
[build-dependencies]
tonic-build = { version = "0.12.3", default-features = false, features = ["prost"] }
TOML
echo 'fn main() {}' >"$work/src/main.rs"
cat >"$work/build.rs" <<'RS'
fn main() {
    tonic_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir("gen")
        .compile_protos(&["proto/api.proto"], &["proto/"])
        .unwrap();
}
RS
(cd "$work" && CARGO_TARGET_DIR="$work/target" cargo build -q)
cp "$work/gen/runtime.v1.rs" "$repo/agent/src/cri/runtime.v1.rs"
echo "wrote agent/src/cri/runtime.v1.rs"
