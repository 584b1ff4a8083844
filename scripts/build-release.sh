#!/usr/bin/env bash
# The release build of the `croupier` binary: what the Dockerfile's build stage runs and
# what CI runs (.ci/run), so the image is built by a command CI has exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release --locked -p croupier-dataplane --bin croupier
