#!/usr/bin/env bash
# Builds the web viewer's NiiVue bundle (src/seganypet/server/static/niivue.js, not committed) from the
# version pinned in web/package-lock.json. Needs node + npm (npm registry only).
set -euo pipefail
cd "$(dirname "$0")/../web"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs
