#!/usr/bin/env bash
# Builds the web dashboard (dashboard/ -> dashboard/dist/, served by the control listener at
# /; docs/dashboard.md): `npm ci` when node_modules is missing or older than
# package-lock.json (no browser download: the browser tests drive Debian's chromium), then
# `npm run build` when dist/ is missing or older than a source. Fast when up to date. Run by
# scripts/setup.sh, by CI, and by the Dockerfile's dashboard stage.
set -euo pipefail
cd "$(dirname "$0")/../dashboard"
command -v npm >/dev/null 2>&1 || { echo "build-dashboard: npm not found (run scripts/setup.sh)" >&2; exit 1; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "build-dashboard: installing npm packages (npm ci)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null
  touch node_modules/.package-lock.json
fi
if [ ! -f dist/index.html ] || [ -n "$(find src index.html package.json package-lock.json vite.config.ts tsconfig.json \
    -newer dist/index.html -print -quit)" ]; then
  echo "build-dashboard: building (npm run build)"
  npm run build --silent >/dev/null
fi
