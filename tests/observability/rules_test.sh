#!/usr/bin/env bash
# Static checks of deploy/prometheus: the rule files and the example configuration load
# (promtool check rules / check config), the rules' unit tests pass (promtool test rules
# tests/observability/*.test.yaml) and the YAML is lint-clean (yamllint).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
for tool in promtool yamllint; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "rules_test: $tool not found (deploy/local/install-deps.sh installs it)" >&2
    exit 1
  fi
done
promtool check rules deploy/prometheus/tokenmeter-rules.yaml deploy/prometheus/tokenmeter-alerts.yaml
promtool check config deploy/prometheus/prometheus.yml
promtool test rules tests/observability/*.test.yaml
yamllint --strict -c tests/observability/yamllint.yaml deploy/prometheus deploy/grafana/provisioning \
  tests/observability/*.yaml
echo "rules_test: PASS"
