#!/bin/sh
# Installs Shoal on a Linux machine and starts it, as k3s's installer does:
#
#   curl -sfL https://example.invalid/shoal/install.sh | sh -                      # a server
#   curl -sfL … | SHOAL_URL=https://SERVER:6443 SHOAL_TOKEN=K10… sh -             # an agent
#
# What it does: installs the `shoal` binary; installs containerd, runc and nftables with the
# distribution's package manager when they are missing (apt, dnf/yum, apk); writes a systemd
# unit (or an OpenRC service) with its environment file; writes shoal-killall.sh and
# shoal-uninstall.sh next to the binary; enables and starts the service. Running it again
# updates what changed and is otherwise a no-op.
#
# Environment (all optional):
#   INSTALL_SHOAL_BINARY       install this local file as the binary
#   INSTALL_SHOAL_DOWNLOAD_URL download the binary from here (a .sha256 beside it is checked)
#   INSTALL_SHOAL_VERSION      the release to download (default: latest)
#   INSTALL_SHOAL_BUILD=true   build from the checkout this script is in (cargo --release)
#   INSTALL_SHOAL_EXEC         the command and flags: "server --cluster-init", "agent …";
#                              the default is "server", or "agent" when SHOAL_URL is set
#   INSTALL_SHOAL_SKIP_START=true   do not start (or restart) the service
#   INSTALL_SHOAL_SKIP_ENABLE=true  do not enable the service at boot (implies SKIP_START)
#   INSTALL_SHOAL_SKIP_PACKAGES=true  do not install containerd/runc/nftables
#   INSTALL_SHOAL_BIN_DIR      where the binary and scripts go (default /usr/local/bin)
#   INSTALL_SHOAL_INIT         systemd, openrc or none (default: detected)
#   INSTALL_SHOAL_ROOT         write every file under this directory instead of / (for tests
#                              and image builds); nothing is enabled or started
#   SHOAL_URL, SHOAL_TOKEN, SHOAL_TOKEN_FILE, SHOAL_DATA_DIR, SHOAL_NODE_NAME
#                              passed to the service through its environment file
#   SHOAL_KUBECONFIG_MODE      the admin kubeconfig's file mode (--write-kubeconfig-mode)
set -eu

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

ROOT="${INSTALL_SHOAL_ROOT:-}"
BIN_DIR="${INSTALL_SHOAL_BIN_DIR:-/usr/local/bin}"
SYSTEMD_DIR=/etc/systemd/system
DATA_DIR="${SHOAL_DATA_DIR:-/var/lib/shoal}"
CONFIG_DIR=/etc/shoal

# --- what to run ---------------------------------------------------------------------------

setup_exec() {
    if [ -n "${INSTALL_SHOAL_EXEC:-}" ]; then
        CMD="$INSTALL_SHOAL_EXEC"
    elif [ -n "${SHOAL_URL:-}" ]; then
        CMD="agent"
    else
        CMD="server"
    fi
    case "$CMD" in
    server | server\ *) ROLE=server ;;
    agent | agent\ *) ROLE=agent ;;
    -*) # flags only: a server unless SHOAL_URL names one to join
        if [ -n "${SHOAL_URL:-}" ]; then ROLE=agent; else ROLE=server; fi
        CMD="$ROLE $CMD"
        ;;
    *) fatal "INSTALL_SHOAL_EXEC must start with 'server' or 'agent', not '$CMD'" ;;
    esac
    if [ "$ROLE" = agent ]; then
        [ -n "${SHOAL_URL:-}" ] || fatal "an agent needs SHOAL_URL (https://SERVER:6443)"
        case "$SHOAL_URL" in
        https://*) ;;
        *) fatal "SHOAL_URL must start with https://, not '$SHOAL_URL'" ;;
        esac
        [ -n "${SHOAL_TOKEN:-}${SHOAL_TOKEN_FILE:-}" ] ||
            fatal "an agent needs SHOAL_TOKEN (the server's <data-dir>/server/token) or SHOAL_TOKEN_FILE"
        SERVICE=shoal-agent
    else
        SERVICE=shoal
    fi
    if [ -n "${SHOAL_KUBECONFIG_MODE:-}" ] && [ "$ROLE" = server ]; then
        CMD="$CMD --write-kubeconfig-mode $SHOAL_KUBECONFIG_MODE"
    fi
}

setup_init() {
    INIT="${INSTALL_SHOAL_INIT:-}"
    if [ -z "$INIT" ]; then
        if [ -d /run/systemd/system ]; then
            INIT=systemd
        elif command -v openrc-run >/dev/null 2>&1; then
            INIT=openrc
        else
            INIT=none
        fi
    fi
    case "$INIT" in
    systemd | openrc | none) ;;
    *) fatal "INSTALL_SHOAL_INIT must be systemd, openrc or none, not '$INIT'" ;;
    esac
}

# --- the binary ----------------------------------------------------------------------------

arch() {
    case "$(uname -m)" in
    x86_64 | amd64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) fatal "unsupported architecture $(uname -m)" ;;
    esac
}

# Puts the binary to install at $BINARY.
fetch_binary() {
    if [ -n "${INSTALL_SHOAL_BINARY:-}" ]; then
        [ -f "$INSTALL_SHOAL_BINARY" ] || fatal "INSTALL_SHOAL_BINARY=$INSTALL_SHOAL_BINARY is not a file"
        BINARY="$INSTALL_SHOAL_BINARY"
        return
    fi
    # Piped into sh, $0 is "sh" and there is no checkout to build from.
    here="$(cd "$(dirname "$0")" 2>/dev/null && pwd)" || here=""
    if [ "${INSTALL_SHOAL_BUILD:-}" = true ]; then
        [ -f "$here/Cargo.toml" ] || fatal "INSTALL_SHOAL_BUILD=true needs the script inside a Shoal checkout"
        command -v cargo >/dev/null 2>&1 || fatal "INSTALL_SHOAL_BUILD=true needs cargo (see scripts/setup-debian.sh)"
        target="${CARGO_TARGET_DIR:-$here/target}"
        info "building shoal from $here"
        (cd "$here" && CARGO_TARGET_DIR="$target" cargo build --locked --release -p shoal)
        BINARY="$target/release/shoal"
        return
    fi
    version="${INSTALL_SHOAL_VERSION:-latest}"
    if [ "$version" = latest ]; then
        default_url="https://example.invalid/shoal/releases/latest/download/shoal-$(arch)"
    else
        default_url="https://example.invalid/shoal/releases/download/$version/shoal-$(arch)"
    fi
    url="${INSTALL_SHOAL_DOWNLOAD_URL:-$default_url}"
    command -v curl >/dev/null 2>&1 || fatal "downloading needs curl"
    TMP_DIR="$(mktemp -d)"
    trap 'rm -rf "$TMP_DIR"' EXIT
    info "downloading $url"
    curl -sfL "$url" -o "$TMP_DIR/shoal" || fatal "cannot download $url"
    curl -sfL "$url.sha256" -o "$TMP_DIR/shoal.sha256" || fatal "cannot download $url.sha256"
    expected="$(cut -d' ' -f1 <"$TMP_DIR/shoal.sha256")"
    actual="$(sha256sum "$TMP_DIR/shoal" | cut -d' ' -f1)"
    [ "$expected" = "$actual" ] || fatal "checksum mismatch for $url: expected $expected, got $actual"
    BINARY="$TMP_DIR/shoal"
}

install_binary() {
    dest="$ROOT$BIN_DIR/shoal"
    mkdir -p "$ROOT$BIN_DIR"
    if [ -f "$dest" ] && cmp -s "$BINARY" "$dest"; then
        info "$BIN_DIR/shoal is up to date"
        BINARY_CHANGED=false
        return
    fi
    info "installing $BIN_DIR/shoal"
    cp "$BINARY" "$dest.tmp"
    chmod 0755 "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    BINARY_CHANGED=true
}

# --- packages ------------------------------------------------------------------------------

install_packages() {
    [ "${INSTALL_SHOAL_SKIP_PACKAGES:-}" = true ] && return
    missing=""
    command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
    command -v runc >/dev/null 2>&1 || missing="$missing runc"
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"
    [ -z "$missing" ] && return
    [ "$(id -u)" -eq 0 ] || fatal "missing:$missing; run as root to install them"
    info "installing$missing"
    if command -v apt-get >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # the package list is meant to split
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; }
    elif command -v dnf >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        dnf install -y $missing
    elif command -v yum >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        yum install -y $missing
    elif command -v apk >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        apk add --no-cache $missing
    else
        fatal "missing:$missing, and no apt-get, dnf, yum or apk to install them with"
    fi
}

# --- files ---------------------------------------------------------------------------------

# write_file PATH MODE: stdin to $ROOT/PATH, replaced only when the content changed; sets
# CHANGED=true when it did.
write_file() {
    dest="$ROOT$1"
    mkdir -p "$(dirname "$dest")"
    umask 077
    cat >"$dest.tmp"
    umask 022
    chmod "$2" "$dest.tmp"
    if [ -f "$dest" ] && cmp -s "$dest.tmp" "$dest"; then
        rm -f "$dest.tmp"
    else
        mv -f "$dest.tmp" "$dest"
        CHANGED=true
    fi
}

env_file_path() {
    if [ "$INIT" = openrc ]; then
        echo "$CONFIG_DIR/$SERVICE.env"
    else
        echo "$SYSTEMD_DIR/$SERVICE.service.env"
    fi
}

write_env_file() {
    ENV_FILE="$(env_file_path)"
    {
        echo "# Written by the Shoal installer; the service reads it at start."
        for name in SHOAL_URL SHOAL_TOKEN SHOAL_TOKEN_FILE SHOAL_DATA_DIR SHOAL_NODE_NAME; do
            eval "value=\${$name:-}"
            # shellcheck disable=SC2154 # assigned by the eval above
            [ -n "$value" ] && printf '%s=%s\n' "$name" "$value"
        done
        true
    } | write_file "$ENV_FILE" 0600
}

write_systemd_unit() {
    write_file "$SYSTEMD_DIR/$SERVICE.service" 0644 <<EOF
[Unit]
Description=Shoal ($ROLE): a Kubernetes-compatible node with a built-in service mesh
Documentation=https://example.invalid/shoal
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-$ENV_FILE
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=-/sbin/modprobe vxlan
ExecStart=$BIN_DIR/shoal $CMD
# Containers outlive a restart of the service: only shoal itself is stopped.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s

[Install]
WantedBy=multi-user.target
EOF
}

write_openrc_service() {
    write_file "/etc/init.d/$SERVICE" 0755 <<EOF
#!/sbin/openrc-run
# Written by the Shoal installer.
description="Shoal ($ROLE)"
depend() {
    need net
    after firewall
}
supervisor=supervise-daemon
command="$BIN_DIR/shoal"
command_args="$CMD"
output_log="/var/log/$SERVICE.log"
error_log="/var/log/$SERVICE.log"
respawn_delay=5
respawn_max=0
start_pre() {
    set -o allexport
    # shellcheck disable=SC1090,SC1091
    [ -f "$ENV_FILE" ] && . "$ENV_FILE"
    set +o allexport
}
EOF
}

write_killall() {
    write_file "$BIN_DIR/shoal-killall.sh" 0755 <<EOF
#!/bin/sh
# Written by the Shoal installer: stops Shoal, its containerd and every container it started,
# and removes the mounts, network namespaces, links and nftables tables it made.
set -u
[ "\$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$ROOT"
DATA_DIR="\$ROOT$DATA_DIR"

if [ -z "\$ROOT" ]; then
    for service in shoal shoal-agent; do
        if command -v systemctl >/dev/null 2>&1; then
            systemctl stop "\$service" 2>/dev/null || true
        elif [ -x "/etc/init.d/\$service" ]; then
            "/etc/init.d/\$service" stop 2>/dev/null || true
        fi
    done
fi

# Shoal, then the containers (children of the shims), then the shims and containerd: all found
# by the data directory on their command lines.
pkill -TERM -f "\$ROOT$BIN_DIR/shoal (server|agent)" 2>/dev/null || true
for shim in \$(pgrep -f "containerd-shim.*\$DATA_DIR" 2>/dev/null); do
    for child in \$(pgrep -P "\$shim" 2>/dev/null); do
        kill -KILL "\$child" 2>/dev/null || true
    done
done
pkill -KILL -f "containerd-shim.*\$DATA_DIR" 2>/dev/null || true
pkill -KILL -f "containerd --config \$DATA_DIR" 2>/dev/null || true
pkill -KILL -f "\$ROOT$BIN_DIR/shoal (server|agent)" 2>/dev/null || true

# Mounts under the data directory, deepest first.
awk -v dir="\$DATA_DIR/" 'index(\$5, dir) == 1 { print \$5 }' /proc/self/mountinfo |
    sort -r | while read -r mount; do umount -l "\$mount" 2>/dev/null || true; done

# Pods' network namespaces (only on a real install: their pins are machine-wide).
if [ -z "\$ROOT" ]; then
    for ns in /var/run/netns/cni-*; do
        [ -e "\$ns" ] || continue
        ip netns delete "\$(basename "\$ns")" 2>/dev/null || true
    done
fi

# Links and tables of this network namespace.
for link in \$(ip -o link show master shoal0 2>/dev/null | awk -F': ' '{ print \$2 }' | cut -d@ -f1); do
    ip link delete "\$link" 2>/dev/null || true
done
for link in shoal0 shoal-vxlan shoal-vxlan6 shoal-dns; do
    ip link delete "\$link" 2>/dev/null || true
done
if command -v nft >/dev/null 2>&1; then
    nft list tables 2>/dev/null | while read -r _ family name; do
        case "\$name" in
        shoal*) nft delete table "\$family" "\$name" 2>/dev/null || true ;;
        esac
    done
fi
exit 0
EOF
}

write_uninstall() {
    write_file "$BIN_DIR/shoal-uninstall.sh" 0755 <<EOF
#!/bin/sh
# Written by the Shoal installer: removes everything it installed, and Shoal's state.
set -u
[ "\$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$ROOT"
"\$ROOT$BIN_DIR/shoal-killall.sh"
if [ -z "\$ROOT" ]; then
    for service in shoal shoal-agent; do
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable "\$service" 2>/dev/null || true
        elif command -v rc-update >/dev/null 2>&1; then
            rc-update delete "\$service" default 2>/dev/null || true
        fi
    done
fi
rm -f "\$ROOT$SYSTEMD_DIR/shoal.service" "\$ROOT$SYSTEMD_DIR/shoal.service.env" \\
    "\$ROOT$SYSTEMD_DIR/shoal-agent.service" "\$ROOT$SYSTEMD_DIR/shoal-agent.service.env" \\
    "\$ROOT/etc/init.d/shoal" "\$ROOT/etc/init.d/shoal-agent" \\
    "\$ROOT/var/log/shoal.log" "\$ROOT/var/log/shoal-agent.log"
[ -z "\$ROOT" ] && command -v systemctl >/dev/null 2>&1 && systemctl daemon-reload
rm -rf "\$ROOT$CONFIG_DIR" "\$ROOT$DATA_DIR"
rm -f "\$ROOT$BIN_DIR/shoal" "\$ROOT$BIN_DIR/shoal-killall.sh"
rm -f "\$0"
# Under INSTALL_SHOAL_ROOT: the directories the installer made, now empty, up to the root.
prune() {
    dir="\$1"
    while [ -n "\$ROOT" ] && [ "\$dir" != "\$ROOT" ] && rmdir "\$dir" 2>/dev/null; do
        dir="\$(dirname "\$dir")"
    done
}
for dir in "\$ROOT$BIN_DIR" "\$ROOT$SYSTEMD_DIR" "\$ROOT/etc/init.d" "\$ROOT/var/log" "\$ROOT$(dirname "$DATA_DIR")"; do
    prune "\$dir"
done
exit 0
EOF
}

# --- service -------------------------------------------------------------------------------

start_service() {
    if [ -n "$ROOT" ]; then
        info "INSTALL_SHOAL_ROOT is set: not enabling or starting $SERVICE"
        return
    fi
    case "$INIT" in
    systemd)
        systemctl daemon-reload
        [ "${INSTALL_SHOAL_SKIP_ENABLE:-}" = true ] && return
        systemctl enable "$SERVICE" >/dev/null
        [ "${INSTALL_SHOAL_SKIP_START:-}" = true ] && return
        if [ "$CHANGED" = true ] || [ "$BINARY_CHANGED" = true ] || ! systemctl is-active --quiet "$SERVICE"; then
            info "starting $SERVICE"
            systemctl restart "$SERVICE"
        fi
        ;;
    openrc)
        [ "${INSTALL_SHOAL_SKIP_ENABLE:-}" = true ] && return
        rc-update add "$SERVICE" default >/dev/null
        [ "${INSTALL_SHOAL_SKIP_START:-}" = true ] && return
        info "starting $SERVICE"
        "/etc/init.d/$SERVICE" restart
        ;;
    none)
        info "no systemd or OpenRC here: start it with '$BIN_DIR/shoal $CMD'"
        ;;
    esac
}

main() {
    setup_exec
    setup_init
    fetch_binary
    install_binary
    install_packages
    CHANGED=false
    write_env_file
    case "$INIT" in
    systemd) write_systemd_unit ;;
    openrc) write_openrc_service ;;
    none) ;;
    esac
    write_killall
    write_uninstall
    start_service
    info "installed $SERVICE ($ROLE)"
}

main "$@"
