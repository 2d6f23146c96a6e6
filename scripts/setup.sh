#!/usr/bin/env bash
# Create ./.venv (if missing) and install rnet_hub with its test extras into it.
# torch/torchvision are pinned so pip takes the builds this machine serves locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# one resolver run
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
# the app's browser test drives Debian's headless Chromium through its chromedriver
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium and chromedriver are missing; install them (apt-get install chromium chromium-driver) for the browser test" >&2
  fi
fi
.venv/bin/python -c "import rnet_hub, timm, torch, torchvision, transformers; print('rnet_hub', rnet_hub.__version__, '| torch', torch.__version__, '| timm', timm.__version__, '| transformers', transformers.__version__)"
