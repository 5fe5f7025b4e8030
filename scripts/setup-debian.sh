#!/bin/sh
# Installs what building, running and testing Shoal needs on a Debian (or Ubuntu) machine, as
# root. Idempotent: installs only what is missing. Used by run-server.sh and test.sh.
set -eu

# Debian packages: a C toolchain for crates that build C, and the peers the benchmarks and
# integration tests drive (etcd for the store comparison, wrk and hey for the Service proxy's),
# and what the node agent runs:
# containerd, runc and nftables, busybox-static for the test images, and shellcheck and ruby for the
# installer and lab checks.
PACKAGES="ca-certificates curl gcc libc6-dev pkg-config procps python3 python3-pip etcd-server etcd-client containerd runc busybox-static iproute2 docker-registry skopeo nftables shellcheck ruby wrk hey"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-debian.sh: missing packages:$missing; run as root to install them" >&2
        exit 1
    fi
    echo "setup-debian.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The official Python Kubernetes client, which the integration tests drive the API with.
if ! python3 -c "import kubernetes" >/dev/null 2>&1; then
    echo "setup-debian.sh: installing the Python kubernetes client" >&2
    python3 -m pip install -q kubernetes >&2 ||
        python3 -m pip install -q --break-system-packages kubernetes >&2
fi

# A Rust toolchain: Debian's own cargo is too old for the workspace, so use rustup's.
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        :
    else
        echo "setup-debian.sh: installing the Rust toolchain with rustup" >&2
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >&2
    fi
fi
