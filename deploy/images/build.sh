#!/usr/bin/env bash
# Builds the flotilla/hub and flotilla/agent images FROM scratch: each holds
# one binary, the shared libraries `ldd` lists for it, and the system CA
# bundle. No base image is pulled.
#
#   deploy/images/build.sh BIN_DIR [TAG]
#
# BIN_DIR holds flotilla-hub and flotilla-agent (e.g. target/release).
set -euo pipefail
bin_dir=${1:?usage: build.sh BIN_DIR [TAG]}
tag=${2:-dev}

build() {
  local name=$1 binary=$2
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib"
  cp "$bin_dir/$binary" "$ctx/rootfs/usr/local/bin/$binary"
  # Every library the dynamic loader would load, at the same path, plus the loader.
  ldd "$bin_dir/$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
  printf 'root:x:0:0::/:/nonexistent\nflotilla:x:65532:65532::/var/lib:/nonexistent\n' > "$ctx/rootfs/etc/passwd"
  chmod 1777 "$ctx/rootfs/tmp"
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/$binary"]
DOCKERFILE
  docker build -q -t "flotilla/$name:$tag" "$ctx" >/dev/null
  echo "flotilla/$name:$tag"
}

build hub flotilla-hub
build agent flotilla-agent
