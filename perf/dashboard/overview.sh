#!/usr/bin/env bash
# The Overview page at scale: redis-server, clickhouse-server and `croupier run` on free
# loopback ports, ROWS generated events (default 50 000 000: 1 M players over 30 days) in
# analytics.events, then perf/dashboard/overview.mjs in headless Chromium (page weight,
# first render, and the API answer alone as the ceiling). Needs a built croupier
# (CROUPIER, default target/release/croupier) and the dashboard (scripts/build-dashboard.sh).
#   perf/dashboard/overview.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS="${1:-50000000}"
CROUPIER="${CROUPIER:-${CARGO_TARGET_DIR:-target}/release/croupier}"
[ -x "$CROUPIER" ] || { echo "overview.sh: no $CROUPIER (scripts/build-release.sh)" >&2; exit 1; }
[ -f dashboard/dist/index.html ] || { echo "overview.sh: dashboard not built (scripts/build-dashboard.sh)" >&2; exit 1; }
dir=$(mktemp -d /tmp/croupier-overview-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(port); ch_tcp=$(port); ch_http=$(port); data=$(port); control=$(port)

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --daemonize no \
  --logfile "$dir/redis.log" & pids+=($!)
mkdir -p "$dir/ch"
cat > "$dir/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/ch/server.log</log><errorlog>$dir/ch/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host><tcp_port>$ch_tcp</tcp_port><http_port>$ch_http</http_port>
  <path>$dir/ch/data/</path><tmp_path>$dir/ch/tmp/</tmp_path><user_files_path>$dir/ch/user_files/</user_files_path>
  <format_schema_path>$dir/ch/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>
  <timezone>UTC</timezone><mark_cache_size>268435456</mark_cache_size><max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
cat > "$dir/ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
XML
(cd "$dir/ch" && exec clickhouse-server --config-file="$dir/ch/config.xml" >/dev/null 2>&1) & pids+=($!)
for _ in $(seq 300); do clickhouse-client --port "$ch_tcp" -q 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done

export CROUPIER_REDIS__ADDR="127.0.0.1:$redis_port" CROUPIER_CLICKHOUSE__ADDR="127.0.0.1:$ch_tcp" \
  CROUPIER_SERVER__LISTEN="127.0.0.1:$data" CROUPIER_CONTROL__LISTEN="127.0.0.1:$control" CROUPIER_OTLP__LISTEN="" \
  CROUPIER_SERVER__PIN=false CROUPIER_SERVER__SHARDS=1 CROUPIER_WORKER__SHARDS=1 CROUPIER_WORKER__CONSUMER=perf \
  CROUPIER_API__JWT_SECRET=perf-secret CROUPIER_API__QUERY_TIMEOUT_MS=600000 CROUPIER_GAMES__g1__SECRET=perf \
  CROUPIER_CONTROL__DASHBOARD_DIR="$PWD/dashboard/dist"
"$CROUPIER" migrate >/dev/null

# ROWS events of game g1 over the last 30 days, in blocks of 10 M: 1 M players, sessions,
# six event names, three channels and platforms.
now=$(date +%s)
start=$((now - 30 * 86400))
t0=$(date +%s.%N)
done_rows=0
while [ "$done_rows" -lt "$ROWS" ]; do
  n=$(( ROWS - done_rows < 10000000 ? ROWS - done_rows : 10000000 ))
  clickhouse-client --port "$ch_tcp" --max_insert_block_size=1048576 -q "
    INSERT INTO analytics.events (event_time, game_id, env, user_id, session_id, event, channel, platform, country,
      app_version, event_id, props_json)
    SELECT toDateTime($start + intDiv(n * 2592000, $ROWS)), 'g1', 'prod', concat('u', toString(n % 1000000)),
      concat('s', toString(n % 1000000), '-', toString(intDiv(n, 7000000))),
      ['login', 'session_start', 'level_start', 'level_clear', 'heartbeat', 'register'][n % 6 + 1],
      ['appstore', 'google', 'web'][n % 3 + 1], ['ios', 'android', 'web'][intDiv(n, 3) % 3 + 1], 'US', '1.0',
      generateUUIDv4(), '{}'
    FROM (SELECT number + $done_rows AS n FROM system.numbers LIMIT $n)"
  done_rows=$((done_rows + n))
  echo "overview.sh: $done_rows of $ROWS rows inserted ($(echo "$(date +%s.%N) - $t0" | bc) s)" >&2
done
# user_days as the worker leaves it for the events it inserts (none here: the rows went
# straight into events): the fold of dataplane/src/clickhouse/user_days.rs.
clickhouse-client --port "$ch_tcp" -q "
  INSERT INTO analytics.user_days (d, game_id, env, user_id, events, active, registered, first_active)
  SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, count(),
    countIf(event IN ('login', 'session_start', 'user.login', 'session.start')),
    countIf(event IN ('register', 'user.register')), countIf(event IN ('first_active'))
  FROM analytics.events GROUP BY d, game_id, env, user_id"
rows=$(clickhouse-client --port "$ch_tcp" -q 'SELECT count() FROM analytics.events')
bytes=$(clickhouse-client --port "$ch_tcp" -q "SELECT sum(bytes) FROM system.parts WHERE active AND table = 'events'")
echo "overview.sh: analytics.events holds $rows rows, $bytes bytes on disk" >&2

"$CROUPIER" run >"$dir/croupier.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$control/healthz" >/dev/null && break; sleep 0.1; done
token=$(node -e '
  const c = require("crypto"); const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = b({alg: "HS256", typ: "JWT"}) + "." + b({sub: "perf", roles: ["viewer"], exp: Math.floor(Date.now() / 1000) + 3600});
  console.log(body + "." + c.createHmac("sha256", "perf-secret").update(body).digest("base64url"));')
BASE="http://127.0.0.1:$control" TOKEN="$token" GAME=g1 ROWS="$rows" node perf/dashboard/overview.mjs
