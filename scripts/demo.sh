#!/usr/bin/env bash
# The main job: `croupier demo`. Installs what is missing (scripts/setup.sh), builds the
# release binary (scripts/build-release.sh, the build the Dockerfile runs), then starts
# redis-server and clickhouse-server with their data in ./croupier-demo, creates the schema,
# runs the data plane and drives it with simulated players, with a live screen refreshed
# every second. Ctrl-C stops everything and keeps the data for the next run.
# Arguments go to `croupier demo` (--duration SECS, --rate N, --fresh, --dir DIR, --plain;
# see `croupier demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
scripts/build-release.sh
exec "${CARGO_TARGET_DIR:-target}/release/croupier" demo "$@"
