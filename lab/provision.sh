#!/bin/sh
# Provisions one machine of a lab (Vagrant or Lima) with the repository's install.sh.
#
#   lab/provision.sh server SHARED_DIR [NODE_IP]
#   lab/provision.sh agent  SHARED_DIR SERVER [NODE_IP]
#
# SHARED_DIR is a folder every machine of the lab sees (Vagrant's synced folder, a Lima
# mount): the server leaves its join token and a kubeconfig for the host there, agents wait
# for the token. NODE_IP is the address on the lab network (default: the default route's).
# The binary comes from SHOAL_BINARY (a Linux build in the repository), else the release
# download. With INSTALL_SHOAL_ROOT set (the tests), nothing is started or waited for.
set -eu

fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

[ $# -ge 2 ] || fatal "usage: provision.sh server SHARED_DIR [NODE_IP] | agent SHARED_DIR SERVER [NODE_IP]"
role="$1"
shared="$2"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${SHOAL_BINARY:-}" ]; then
    case "$SHOAL_BINARY" in
    /*) INSTALL_SHOAL_BINARY="$SHOAL_BINARY" ;;
    *) INSTALL_SHOAL_BINARY="$repo/$SHOAL_BINARY" ;;
    esac
    export INSTALL_SHOAL_BINARY
fi
mkdir -p "$shared"

# Waits up to $2 seconds for file $1.
wait_for() {
    waited=0
    until [ -s "$1" ]; do
        [ "$waited" -lt "$2" ] || fatal "$1 did not appear within $2 s"
        sleep 2
        waited=$((waited + 2))
    done
}

case "$role" in
server)
    node_ip="${3:-}"
    flags="server"
    [ -n "$node_ip" ] && flags="$flags --node-ip $node_ip --advertise-address $node_ip"
    INSTALL_SHOAL_EXEC="$flags" SHOAL_KUBECONFIG_MODE=644 sh "$repo/install.sh"
    [ -n "${INSTALL_SHOAL_ROOT:-}" ] && exit 0
    data_dir="${SHOAL_DATA_DIR:-/var/lib/shoal}"
    wait_for "$data_dir/server/token" 180
    wait_for "$data_dir/kubeconfig.yaml" 180
    cp "$data_dir/server/token" "$shared/token"
    # Where the host reaches the API: LAB_API_ADDRESS (Lima forwards guest ports to the host's
    # 127.0.0.1), else the node's address on the lab network.
    address="${LAB_API_ADDRESS:-${node_ip:-$(ip -4 route get 192.0.2.1 | sed -n 's/.* src \([0-9.]*\).*/\1/p')}}"
    sed "s#https://127.0.0.1:6443#https://$address:6443#" "$data_dir/kubeconfig.yaml" >"$shared/kubeconfig.yaml"
    echo "[INFO]  server ready; on the host: export KUBECONFIG=$shared/kubeconfig.yaml"
    ;;
agent)
    [ $# -ge 3 ] || fatal "usage: provision.sh agent SHARED_DIR SERVER [NODE_IP]"
    server="$3"
    node_ip="${4:-}"
    flags="agent"
    [ -n "$node_ip" ] && flags="$flags --node-ip $node_ip"
    [ -n "${INSTALL_SHOAL_ROOT:-}" ] || wait_for "$shared/token" 600
    SHOAL_URL="https://$server:6443" SHOAL_TOKEN="$(cat "$shared/token")" \
        INSTALL_SHOAL_EXEC="$flags" sh "$repo/install.sh"
    ;;
*)
    fatal "the role must be server or agent, not '$role'"
    ;;
esac
