#!/usr/bin/env bash
# Checks the monitoring deployment in deploy/: the Prometheus configuration and alert
# rules (promtool check), the rules' unit tests (promtool test rules; every alert has a case
# where it fires and one where it does not), the Grafana boards' queries (parsed by
# promtool), the Alertmanager configuration and routing (amtool), and the full stack:
# docker-compose.yml (docker-compose config), every file it mounts from deploy/ (nginx -t,
# haproxy -c for deploy/haproxy/haproxy.cfg,
# redis-server with deploy/redis/redis.conf, croupier check, the Collector's pipelines, the
# seccomp profile), deploy/k8s/ (kubernetes-validate, check-jsonschema with KEDA's schema),
# and that CI runs every command of the Dockerfile's build stage. CI runs
# it from .ci/run; the tools come from scripts/setup.sh (Debian: prometheus,
# prometheus-alertmanager, docker-compose, nginx, redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

for tool in promtool amtool python3 docker-compose nginx haproxy redis-server redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-deploy: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done

promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/tests/*.yml
python3 scripts/deploy_lint.py coverage
python3 scripts/deploy_lint.py collector

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
route "ops-webhook,warning" alertname=CroupierDeadLetters severity=warning
route "ops-webhook,info" alertname=Something severity=info
route "ops-webhook,warning" alertname=Something

# The full stack: docker-compose.yml and what it mounts.
docker-compose config -q
python3 scripts/compose_lint.py
# nginx: the shipped file, as is, with a temporary prefix (pid and temp files) so that no
# system path is needed.
mkdir -p "$tmp/nginx"
nginx -t -q -p "$tmp/nginx/" -c "$PWD/deploy/nginx/nginx.conf" -g "pid $tmp/nginx/nginx.pid;"
# HAProxy (several data-plane nodes, docs/deploy.md): the shipped file as is, with its
# default addresses, and with the loopback ones tests/it/haproxy.rs gives it.
haproxy -c -q -f deploy/haproxy/haproxy.cfg
HAPROXY_BIND=127.0.0.1:18080 CROUPIER_1=127.0.0.1:18081 \
  CROUPIER_2=127.0.0.1:18083 HAPROXY_MAXCONN=1000 \
  haproxy -c -q -f deploy/haproxy/haproxy.cfg
# Redis: the shipped file loads and gives an AOF fsynced on every write.
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server deploy/redis/redis.conf --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --daemonize no \
  --logfile "$tmp/redis.log" &
redis_pid=$!
trap 'redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || kill "$redis_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for kv in "appendonly yes" "appendfsync always" "maxmemory-policy noeviction"; do
  set -- $kv
  got=$(redis-cli -p "$redis_port" config get "$1" | tail -1)
  [ "$got" = "$2" ] || { echo "check-deploy: deploy/redis/redis.conf gives $1=$got, expected $2" >&2; exit 1; }
done
# croupier: the replicas' configuration loads (with the secret the compose file gives it).
env -u CROUPIER_CONFIG CROUPIER_GAMES__demo-game__SECRET=check \
  cargo run -q -p croupier-dataplane --bin croupier -- check --config deploy/croupier/croupier.toml
# Kubernetes (deploy/k8s/, offline): the core objects against Kubernetes' schemas
# (kubernetes-validate, strict: no unknown field), the ScaledObject against KEDA's CRD
# schema vendored in deploy/k8s/schemas/, what the schemas do not say (deploy_lint.py k8s),
# and croupier check on the two configuration files of the ConfigMap, with the secret files.
for tool in kubernetes-validate check-jsonschema; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-deploy: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done
core=()
for f in deploy/k8s/*.yaml; do
  grep -q '^kind: \(ScaledObject\|TriggerAuthentication\)' "$f" || core+=("$f")
done
kubernetes-validate --strict --quiet -k 1.30.0 "${core[@]}"
check-jsonschema --schemafile deploy/k8s/schemas/keda-scaledobject-v1alpha1.json deploy/k8s/keda-scaledobject.yaml
python3 scripts/deploy_lint.py k8s
mkdir -p "$tmp/k8s"
python3 -c 'import sys, yaml; d = yaml.safe_load(open("deploy/k8s/configmap.yaml"))["data"]
for k, v in d.items(): open(sys.argv[1] + "/" + k, "w").write(v)' "$tmp/k8s"
printf 'check\n' > "$tmp/k8s/secret"
for f in ingest worker; do
  env -u CROUPIER_CONFIG CROUPIER_GAMES__demo-game__SECRET_FILE="$tmp/k8s/secret" \
    CROUPIER_CLICKHOUSE__PASSWORD_FILE="$tmp/k8s/secret" CROUPIER_API__JWT_SECRET_FILE="$tmp/k8s/secret" \
    CROUPIER_REDIS__PASSWORD_FILE="$tmp/k8s/secret" \
    cargo run -q -p croupier-dataplane --bin croupier -- check --config "$tmp/k8s/$f.toml"
done
echo "check-deploy: deploy/ is consistent"
