#!/usr/bin/env bash
# The test command: set-up, then every unit and integration test (the integration tests
# start their own redis-server on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo nextest run --workspace --no-fail-fast "$@"
