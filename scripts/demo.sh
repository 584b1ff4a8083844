#!/usr/bin/env bash
# The main job: the whole pipeline on local servers. Starts redis-server and
# clickhouse-server on free loopback ports in a temporary directory, creates the schema
# (`croupier migrate`), runs `croupier run` (ingest + worker), sends signed batches of game
# events and payments over HTTP, and shows what landed in the streams and in ClickHouse.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p croupier-dataplane --bin croupier -p croupier-perf --bin croupier-loadgen

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
redis_port=$(free_port); ch_port=$(free_port); ch_http=$(free_port); http_port=$(free_port); control_port=$(free_port)
cleanup() {
  for pid in ${croupier_pid:-} ${ch_pid:-} ${redis_pid:-}; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save "" --daemonize no \
  --logfile "$work/redis.log" &
redis_pid=$!

mkdir -p "$work/ch"
cat > "$work/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$work/ch/server.log</log><errorlog>$work/ch/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$ch_port</tcp_port>
  <http_port>$ch_http</http_port>
  <path>$work/ch/data/</path>
  <tmp_path>$work/ch/tmp/</tmp_path>
  <user_files_path>$work/ch/user_files/</user_files_path>
  <format_schema_path>$work/ch/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
cat > "$work/ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
(cd "$work/ch" && exec clickhouse-server --config-file="$work/ch/config.xml" >/dev/null 2>&1) &
ch_pid=$!
for _ in $(seq 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$ch_http/ping" >/dev/null 2>&1 && break; sleep 0.05; done

export CROUPIER_SERVER__LISTEN="127.0.0.1:$http_port"
export CROUPIER_CONTROL__LISTEN="127.0.0.1:$control_port"
export CROUPIER_SERVER__PIN=false
export CROUPIER_REDIS__ADDR="127.0.0.1:$redis_port"
export CROUPIER_CLICKHOUSE__ADDR="127.0.0.1:$ch_port"
target/release/croupier migrate --config croupier.example.toml
target/release/croupier run --config croupier.example.toml &
croupier_pid=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
echo "readyz: $(curl -s "http://127.0.0.1:$http_port/readyz")"

# A plain client first (Python's standard library only): signed batches, and one refusal.
python3 scripts/demo_send.py "http://127.0.0.1:$http_port" demo-game change-me "${DEMO_BATCHES:-50}"
# Then game traffic from the load generator's player model, at a modest fixed rate.
target/release/croupier-loadgen --url "127.0.0.1:$http_port" --game demo-game --secret change-me \
  --connections 2 --rate "${DEMO_RATE:-20000}" --duration "${DEMO_SECONDS:-5}" --payments-every 20 \
  --out "$work/load.json" >/dev/null
python3 - "$work/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency"]
print("load generator: %d events + %d payments accepted at %.0f events/s, ack p50 %d us, p99 %d us"
      % (r["accepted_events"], r["accepted_records"] - r["accepted_events"], r["events_per_sec"], lat["p50_us"], lat["p99_us"]))
PY

q() { clickhouse-client --port "$ch_port" --query "$1"; }
want_events=$(( ${DEMO_BATCHES:-50} * 100 + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted_events"])' "$work/load.json") ))
want_payments=$(( 10 + $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["accepted_records"]-r["accepted_events"])' "$work/load.json") ))
for _ in $(seq 400); do
  [ "$(q 'SELECT count() FROM analytics.events FINAL')" -ge "$want_events" ] \
    && [ "$(q 'SELECT count() FROM analytics.payments FINAL')" -ge "$want_payments" ] && break
  sleep 0.05
done
echo "accepted: $want_events events, $want_payments payments"
for s in analytics:events analytics:custom analytics:payments; do
  echo "$s: $(redis-cli -p "$redis_port" xlen "$s") entries, $(redis-cli -p "$redis_port" xpending "$s" analytics-workers | head -1) pending"
done
echo "ClickHouse analytics.events:   $(q 'SELECT count() FROM analytics.events FINAL') events"
echo "ClickHouse analytics.payments: $(q 'SELECT count() FROM analytics.payments FINAL') payments, $(q 'SELECT sum(amount_cents) FROM analytics.payments FINAL') cents"
echo "Top events:"
q "SELECT event, count() AS n, uniqExact(user_id) AS users FROM analytics.events FINAL GROUP BY event ORDER BY n DESC LIMIT 5 FORMAT PrettyCompact"
echo "Control port /metrics (http://127.0.0.1:$control_port/metrics), a few series:"
curl -s "http://127.0.0.1:$control_port/metrics" \
  | grep -E '^(croupier_events_accepted_total|croupier_events_refused_total|croupier_worker_rows_inserted_total|croupier_stream_backlog_events|croupier_build_info)' \
  | sed 's/^/  /' || true
echo "Control port /readyz: $(curl -s "http://127.0.0.1:$control_port/readyz")"
