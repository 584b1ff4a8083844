#!/usr/bin/env bash
# Fuzzes every decoder of bytes from the network (docs/fuzzing.md): builds the cargo-fuzz
# targets of fuzz/ on nightly, then runs each for SECONDS (default 20), one after another,
# starting from the committed corpus. New inputs go to fuzz/corpus-work/<target>/ (not
# committed), crashes to fuzz/artifacts/<target>/, logs to fuzz/logs/<target>.log.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Without a nightly toolchain it says so and exits 0 (cargo-fuzz is installed here where
# is present) it says so and exits 0. FUZZ_SANITIZER=address builds with ASan (slower);
# the default is none, which still catches panics, overflows and stack exhaustion.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true
all_targets=(http_request http_chunks json_envelope otlp_request resp_replies clickhouse_packets batch_entry hll_redis_string)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped: no nightly toolchain here (cargo-fuzz needs one; the corpus is still replayed on stable by the fuzz_corpus test)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (nightly is present)"
  cargo install --locked cargo-fuzz
fi

# The fuzz crate is its own workspace with its own target dir (fuzz/target): its
# instrumented builds must not mix with the main workspace's.
unset CARGO_TARGET_DIR
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-none}"

cd fuzz
echo "fuzz: building ${#targets[@]} target(s) on $(cargo +nightly --version) (sanitizer: $sanitizer)"
build_start=$SECONDS
for t in "${targets[@]}"; do
  cargo +nightly fuzz build --sanitizer "$sanitizer" "$t"
done
echo "fuzz: built in $((SECONDS - build_start)) s"

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "artifacts/$t"
  echo "fuzz: $t for ${seconds} s"
  status=0
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "corpus-work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || status=$?
  last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1 || true)
  execs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "logs/$t.log" | grep -Eo '[0-9]+$' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || echo "?")
  ft=$(grep -Eo 'ft: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || echo "?")
  corp=$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || echo "?")
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $status); the input is in fuzz/artifacts/$t/, the log in fuzz/logs/$t.log:"
    grep -E -A25 'panicked|ERROR: libFuzzer|deadly signal|==ERROR' "logs/$t.log" | head -40 || true
    echo "fuzz: to keep it as a known crash: cp fuzz/artifacts/$t/<file> fuzz/crashes/$t/ (see docs/fuzzing.md)"
  fi
  summary+=("$(printf '%-20s %12s execs  cov %6s  ft %6s  corpus %-12s %s' "$t" "$execs" "$cov" "$ft" "$corp" \
    "$([ "$status" -eq 0 ] && echo ok || echo CRASH)")")
done

echo "fuzz: ${seconds} s per target"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz: no crash in ${#targets[@]} target(s)"
