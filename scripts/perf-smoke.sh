#!/usr/bin/env bash
# The performance harness in smoke mode (seconds, not minutes), so it cannot rot: it must
# produce a complete report. It asserts no speed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build -q -p croupier-dataplane --bin croupier -p croupier-perf --bins
out=target/perf-smoke.md
target/debug/croupier-perf all --smoke --out "$out" >/dev/null
for section in "### Ceilings measured in this run" "### Ingest" "### Figures and ratios" \
  "## Worker: Redis stream" "accepted at max / rows in ClickHouse" "freshness p50 / p99" \
  "### io driver and shards"; do
  grep -qF "$section" "$out" || { echo "perf smoke: report lacks '$section'" >&2; cat "$out" >&2; exit 1; }
done
if grep -E '\| (NaN|inf) ' "$out"; then echo "perf smoke: report has empty figures" >&2; exit 1; fi
echo "perf smoke: complete report in $out"
