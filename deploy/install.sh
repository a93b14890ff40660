#!/usr/bin/env bash
# Installs one ringlog node's files (README.md#install; run from the repository root):
#
#   /usr/local/bin/ringlog                      the binary (0755)
#   /etc/ringlog/node.toml                      from deploy/node.example.toml, unless present (0640)
#   /var/lib/ringlog                            the data directory (0700, owned by ringlog)
#   /etc/systemd/system/ringlog.service         the unit (0644)
#   /usr/local/share/doc/ringlog/               README.md, tuning.md, docs/config.md, docs/metrics.md
#
# and creates the system user `ringlog`. It starts nothing: edit node.toml, check it, then
# enable the unit (the script prints the commands).
#
# Options:
#   --binary PATH   the binary to install (default: target/release/ringlog)
#   --root DIR      install under DIR instead of / (packaging, tests)
#   --no-user       do not create the user nor chown anything (packaging, tests)
#
# tests/cli/deploy.rs runs this script under a temporary --root and starts nodes from what
# it installed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="$repo/target/release/ringlog"
root=""
create_user=1

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --root) root="${2%/}"; shift 2 ;;
        --no-user) create_user=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$binary" ]; then
    echo "install.sh: $binary is not an executable: build it first (cargo build --release)" >&2
    exit 1
fi

if [ "$create_user" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: run as root (or with --no-user under --root)" >&2
        exit 1
    fi
    if ! getent passwd ringlog >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/ringlog --no-create-home \
            --shell /usr/sbin/nologin --comment "ringlog node" ringlog
        echo "created system user ringlog"
    fi
fi

owner() { # owner USER:GROUP PATH — only when we manage the user
    if [ "$create_user" = 1 ]; then chown "$1" "$2"; fi
}

install -D -m 0755 "$binary" "$root/usr/local/bin/ringlog"

install -d -m 0750 "$root/etc/ringlog"
owner root:ringlog "$root/etc/ringlog"
config="$root/etc/ringlog/node.toml"
if [ -e "$config" ]; then
    echo "kept the existing $config"
else
    install -m 0640 "$repo/deploy/node.example.toml" "$config"
    owner root:ringlog "$config"
fi

# systemd's StateDirectory= would create it too; created here so doctor can check it first.
install -d -m 0700 "$root/var/lib/ringlog"
owner ringlog:ringlog "$root/var/lib/ringlog"

install -D -m 0644 "$repo/deploy/ringlog.service" "$root/etc/systemd/system/ringlog.service"

docs="$root/usr/local/share/doc/ringlog"
install -d -m 0755 "$docs"
install -m 0644 "$repo/README.md" "$repo/tuning.md" "$repo/docs/config.md" \
    "$repo/docs/metrics.md" "$docs/"

cat <<EOF
installed ringlog under ${root:-/}. Next:
  1. edit $config: node_id, the [[peers]] addresses (same list on every node)
  2. ringlog config check --config /etc/ringlog/node.toml
  3. prlimit --memlock=unlimited --nofile=1048576 runuser -u ringlog -- \\
       ringlog doctor --data-dir /var/lib/ringlog \\
       --shards <shards> --io-memory <io_memory> --retention-bytes <storage.retention_bytes_max>
  4. systemctl daemon-reload && systemctl enable --now ringlog
     journalctl -u ringlog -f      # the ready line, then the logs
EOF
