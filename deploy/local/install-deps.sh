#!/usr/bin/env bash
# Installs what tokenmeter needs to build, test and run locally, from Debian bookworm packages
# only. Idempotent: installs nothing when everything is present. Needs root (or sudo) when
# something is missing.
set -euo pipefail

PACKAGES=(
  # build
  cmake ninja-build g++ pkg-config clang-format
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libyaml-cpp-dev libcli11-dev libcivetweb-dev civetweb
  # run and test
  tzdata redis-server rocksdb-tools python3 python3-grpcio procps
  # fault tests: network namespaces, nftables, loop-mounted small disks
  iproute2 nftables e2fsprogs util-linux
  # observability tests: promtool + Prometheus server, YAML lint, dashboard schema check (npm)
  prometheus yamllint python3-yaml nodejs
  # Kubernetes tests: build, inspect and run the OCI image (podman runs it with runc)
  buildah skopeo podman runc
)
# Debian's nodejs comes without npm; a nodejs from elsewhere (e.g. NodeSource) bundles it.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-deps: missing packages (${missing[*]}) and not root; run as root or install them" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# redis-server's package starts a system instance; tests start their own on other ports.
echo "install-deps: done"
