#!/usr/bin/env bash
# Set-up for the server tests: the real protocol clients, the NiiVue bundle, and a headless browser.
#   - nninteractive-client 2.6.0 (the nnInteractive napari/Slicer remote client) and MONAI Label's client
#   - the viewer bundle (npm ci in web/, see setup_web.sh)
#   - Debian's chromium + Playwright for Python (driving /usr/bin/chromium; no browser download)
# Run as root (apt-get) inside the project's virtual environment.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python -m pip install --quiet "nninteractive-client==2.6.0" "playwright>=1.40" "requests>=2.28"
python -m pip install --quiet --no-deps "monailabel==0.8.5"
need=()
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash "$here/setup_web.sh"
chromium --version
