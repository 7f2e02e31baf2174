#!/usr/bin/env bash
# Builds the tokenmeter OCI image FROM scratch, with no registry pull and no RUN step:
#   1. stages rootfs/: the binaries (debug info stripped), every shared library `ldd` lists for
#      them plus the dynamic loader, the time zone database (calendar windows of policies use
#      IANA zones), /etc/passwd + /etc/group with the user nonroot (65532), /etc/nsswitch.conf;
#   2. `buildah build` of deploy/image/Containerfile (COPY only) into a private storage;
#   3. writes the image as an OCI archive too (copy it anywhere with
#      `skopeo copy oci-archive:<file> docker://<registry>/tokenmeter:<tag>`).
#
# Usage: deploy/image/build.sh BUILD_DIR [OUT_DIR]
#   BUILD_DIR  a CMake build directory holding the built binaries
#   OUT_DIR    where the staging tree, the storage and the archive go (default BUILD_DIR/image)
# Env: IMAGE (default localhost/tokenmeter:<project version>).
# Prints the image name and the archive path on the last two lines.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
BUILD_DIR="$(cd "$1" && pwd)"
OUT="${2:-$BUILD_DIR/image}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

VERSION="$(sed -n 's/^project(tokenmeter VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Reproducible: file times and the image's creation time are the commit's time.
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
IMAGE="${IMAGE:-localhost/tokenmeter:$VERSION}"
BINARIES=(
  "$BUILD_DIR/services/aggregator/tokenmeter-aggregator"
  "$BUILD_DIR/services/sidecar/tokenmeter-sidecar"
  "$BUILD_DIR/services/ctl/tokenmeterctl"
)
for tool in buildah skopeo ldd strip; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool not found (deploy/local/install-deps.sh installs it)" >&2
    exit 1
  fi
done
for bin in "${BINARIES[@]}"; do
  [ -x "$bin" ] || { echo "build.sh: $bin missing: build it first" >&2; exit 1; }
done

CONTEXT="$OUT/context"
ROOTFS="$CONTEXT/rootfs"
rm -rf "$CONTEXT"
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc" "$ROOTFS/tmp" "$CONTEXT/writable/var/lib/tokenmeter"

# Libraries at the paths the loader looks them up at; symlinks resolved to the file itself.
copy_library() {
  local path="$1"
  [ -e "$ROOTFS$path" ] && return 0
  install -D -m 0755 "$(readlink -f "$path")" "$ROOTFS$path"
}
for bin in "${BINARIES[@]}"; do
  strip --strip-debug -o "$ROOTFS/usr/local/bin/$(basename "$bin")" "$bin"
  chmod 0755 "$ROOTFS/usr/local/bin/$(basename "$bin")"
  deps="$(ldd "$bin")"
  if grep -q "not found" <<<"$deps"; then
    echo "build.sh: unresolved libraries of $bin:" >&2
    grep "not found" <<<"$deps" >&2
    exit 1
  fi
  while read -r lib; do copy_library "$lib"; done < <(
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$deps")
done

# Time zones (policies' calendar windows); drop the one link out of the tree (to /etc/localtime).
mkdir -p "$ROOTFS/usr/share"
cp -a /usr/share/zoneinfo "$ROOTFS/usr/share/"
find "$ROOTFS/usr/share/zoneinfo" -type l -lname '/*' -delete

cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/var/lib/tokenmeter:/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
# Every file read-only for the runtime user; reproducible timestamps.
chmod -R go-w "$ROOTFS"
chmod 1777 "$ROOTFS/tmp"  # Writable only where a volume is mounted: the root is read-only.
find "$CONTEXT" -exec touch -h -d "@$EPOCH" {} +

# shellcheck source=containers-env.sh
source "$HERE/containers-env.sh" "$OUT"
buildah build --quiet --layers=false --timestamp "$EPOCH" \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
  -f "$HERE/Containerfile" -t "$IMAGE" "$CONTEXT" >"$OUT/image-id"
buildah rmi --prune >/dev/null 2>&1 || true  # Earlier builds' untagged images (private storage).
ARCHIVE="$OUT/tokenmeter-$VERSION.oci.tar"
rm -f "$ARCHIVE"
skopeo copy --quiet "containers-storage:$IMAGE" "oci-archive:$ARCHIVE:$IMAGE"
echo "build.sh: $(du -sh "$ROOTFS" | cut -f1) staged," \
  "$(find "$ROOTFS" -name '*.so*' | wc -l) libraries, image id $(cut -c1-12 "$OUT/image-id")" >&2
echo "$IMAGE"
echo "$ARCHIVE"
