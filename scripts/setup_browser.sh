#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (no browser download) and playwright-core from npm
# (tests/browser/package-lock.json).  Idempotent; run by `make test` and `make test-browser`.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup_browser: apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup_browser: $(chromium --version 2>/dev/null | head -1); playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
