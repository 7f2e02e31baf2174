#!/usr/bin/env bash
# Checks of deploy/grafana/dashboards/*.json:
#   1. they are what deploy/grafana/generate.py writes (no hand edits lost);
#   2. structure (dashboards_lint.py): provisioning-ready, ${datasource} everywhere,
#      $__rate_interval in rates, grid, variables;
#   3. schema: tsc --strict against npm @grafana/schema (pinned by schema/package-lock.json,
#      installed with `npm ci` into BUILD_DIR/observability-schema, only when the lock changed),
#      plus a negative control: a dashboard with a misspelt option must fail the same check.
# Usage: dashboards_test.sh [BUILD_DIR]   (default: <repo>/build)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${1:-$ROOT/build}"
SCHEMA_SRC="$ROOT/tests/observability/schema"
NPM_DIR="$BUILD_DIR/observability-schema"
DASHBOARDS=("$ROOT"/deploy/grafana/dashboards/*.json)
cd "$ROOT"

/usr/bin/python3 deploy/grafana/generate.py --check
/usr/bin/python3 tests/observability/dashboards_lint.py deploy/grafana/dashboards

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "dashboards_test: $tool not found (deploy/local/install-deps.sh installs it)" >&2
    exit 1
  fi
done
mkdir -p "$NPM_DIR"
cp "$SCHEMA_SRC/package.json" "$SCHEMA_SRC/package-lock.json" "$SCHEMA_SRC/tsconfig.json" "$NPM_DIR/"
stamp="$(sha256sum "$SCHEMA_SRC/package-lock.json" | cut -d' ' -f1)"
if [ ! -x "$NPM_DIR/node_modules/.bin/tsc" ] || [ "$(cat "$NPM_DIR/.lock-sha256" 2>/dev/null)" != "$stamp" ]; then
  (cd "$NPM_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$stamp" >"$NPM_DIR/.lock-sha256"
fi

node "$SCHEMA_SRC/make_check.mjs" "$NPM_DIR/dashboards.check.ts" "${DASHBOARDS[@]}"
(cd "$NPM_DIR" && node_modules/.bin/tsc -p tsconfig.json)
echo "dashboards_test: tsc --strict: ${#DASHBOARDS[@]} dashboards match @grafana/schema"

# Negative control: the check must catch a wrong option value and an unknown option.
bad="$NPM_DIR/negative-control.json"
sed -e '0,/"displayMode": "table"/s//"displayMode": "tabel"/' \
  -e '0,/"reduceOptions"/s//"reduceOptionz"/' "${DASHBOARDS[0]}" >"$bad"
node "$SCHEMA_SRC/make_check.mjs" "$NPM_DIR/dashboards.check.ts" "$bad" >/dev/null
if (cd "$NPM_DIR" && node_modules/.bin/tsc -p tsconfig.json >"$NPM_DIR/negative-control.log" 2>&1); then
  echo "dashboards_test: FAIL: the schema check accepted a broken dashboard ($bad)" >&2
  exit 1
fi
grep -c "error TS" "$NPM_DIR/negative-control.log" | sed 's/^/dashboards_test: negative control rejected with /; s/$/ errors/'
echo "dashboards_test: PASS"
