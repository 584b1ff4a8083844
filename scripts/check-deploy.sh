#!/usr/bin/env bash
# Checks the monitoring deployment in deploy/: the Prometheus configuration and alert
# rules (promtool check), the rules' unit tests (promtool test rules; every alert has a case
# where it fires and one where it does not), the Grafana boards' queries (parsed by
# promtool), and the Alertmanager configuration and routing (amtool). CI runs it from
# .ci/run; the tools come from scripts/setup.sh (Debian: prometheus, prometheus-alertmanager).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in promtool amtool python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-deploy: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done

promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/tests/*.yml
python3 scripts/deploy_lint.py coverage

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 scripts/deploy_lint.py board-rules > "$tmp/board-queries.yml"
promtool check rules "$tmp/board-queries.yml"

amtool check-config deploy/alertmanager/alertmanager.yml
# Routing by severity: every alert to the operations webhook, then by severity.
route() {
  local want="$1"; shift
  local got
  got=$(amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml "$@" 2>/dev/null)
  if [ "$got" != "$want" ]; then
    echo "check-deploy: alert {$*} routed to '$got', expected '$want'" >&2
    exit 1
  fi
}
route "ops-webhook,critical" alertname=CroupierClickHouseWriteFailures severity=critical
route "ops-webhook,warning" alertname=CroupierStreamBacklogHigh severity=warning
route "ops-webhook,info" alertname=Something severity=info
route "ops-webhook,warning" alertname=Something
echo "check-deploy: deploy/ is consistent"
