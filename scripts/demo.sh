#!/usr/bin/env bash
# The main job: the ingest data plane on local servers. Starts a redis-server on a free
# loopback port in a temporary directory, runs `croupier ingest` against it, sends signed
# batches of game events and payments, and shows what landed in the streams.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p croupier-dataplane --bin croupier

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
redis_port=$(free_port)
http_port=$(free_port)
cleanup() {
  [ -n "${croupier_pid:-}" ] && kill "$croupier_pid" 2>/dev/null && wait "$croupier_pid" 2>/dev/null || true
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save "" --daemonize no \
  --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

export CROUPIER_SERVER__LISTEN="127.0.0.1:$http_port"
export CROUPIER_SERVER__PIN=false
export CROUPIER_REDIS__ADDR="127.0.0.1:$redis_port"
target/release/croupier ingest --config croupier.example.toml &
croupier_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
echo "readyz: $(curl -s "http://127.0.0.1:$http_port/readyz")"

python3 scripts/demo_send.py "http://127.0.0.1:$http_port" demo-game change-me "${DEMO_BATCHES:-50}"

for s in analytics:events analytics:custom analytics:payments; do
  echo "$s: $(redis-cli -p "$redis_port" xlen "$s") entries; group: $(redis-cli -p "$redis_port" xinfo groups "$s" | tr '\n' ' ')"
done
