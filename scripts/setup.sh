#!/usr/bin/env bash
# Create ./.venv (if missing) and install rnet_hub with its test extras into it.
# torch/torchvision are pinned first so pip takes the builds this machine serves locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import rnet_hub, timm, torch, torchvision, transformers; print('rnet_hub', rnet_hub.__version__, '| torch', torch.__version__, '| timm', timm.__version__, '| transformers', transformers.__version__)"
