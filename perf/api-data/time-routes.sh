#!/bin/bash
# Times Analytics API routes over the generated history of this directory.
#
#   perf/api-data/time-routes.sh <croupier> <clickhouse tcp port> <redis port> [runs]
#
# Give it a ClickHouse that `croupier migrate` made the schema on and that holds
# registrations.sql, events.sql and payments.sql (in that order, through
# `clickhouse-client --port <port> --multiquery < file`), and a redis-server. It starts
# `<croupier> run` on free loopback ports against them, asks each route `runs` times
# (3) with an admin token, and prints: status, seconds, route, and a digest of the answer
# (the same figures give the same digest from two builds).
set -euo pipefail
BIN=$1 CH=$2 REDIS=$3 RUNS=${4:-3}
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CONTROL=$(port)
SECRET=time-routes-secret-0123456789abcdef
cat > "$DIR/croupier.toml" <<TOML
[server]
listen = "127.0.0.1:$(port)"
shards = 1
pin = false
[redis]
addr = "127.0.0.1:$REDIS"
[clickhouse]
addr = "127.0.0.1:$CH"
[control]
listen = "127.0.0.1:$CONTROL"
[api]
jwt_secret = "$SECRET"
[games.g1]
secret = "s1"
TOML
"$BIN" run --config "$DIR/croupier.toml" > "$DIR/croupier.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$CONTROL/healthz" && break; sleep 0.1; done
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "perf", "roles": ["admin"], "exp": int(time.time()) + 3600}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)
RANGE="game_id=g1&env=prod&start=2026-11-20&end=2026-12-06"
for route in overview payments/summary payments/transactions segments ltv attribution levels retention; do
  for k in $(seq 1 "$RUNS"); do
    out=$(curl -s -o "$DIR/answer" -w '%{http_code} %{time_total}' -H "Authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$CONTROL/api/analytics/$route?$RANGE&run=$k")
    echo "$out $route $(md5sum < "$DIR/answer" | cut -c1-8)"
  done
done
