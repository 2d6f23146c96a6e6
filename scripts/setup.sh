#!/usr/bin/env bash
# Create ./.venv (if missing) and install rnet_hub with its test extras into it.
# torch/torchvision are pinned so the resolver takes the builds this machine serves locally.
#
# The install goes through uv (parallel downloads and unpacking, files linked from its cache) when
# uv can be installed into the venv, and through pip otherwise or with RNET_HUB_SETUP_PIP=1.
# uv does not read pip's configuration, so pip's indexes, find-links, constraints and CA bundle are
# handed to it: both installers see the same packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
REQUIREMENTS=("torch==2.14.1" "torchvision==0.29.1" -e ".[test]")
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

uv_environment() {  # pip's configuration as the environment variables uv reads, one `export` per line
  .venv/bin/python -m pip config list 2>/dev/null | .venv/bin/python -c '
import shlex, sys
uv_names = {"index-url": "UV_INDEX_URL", "extra-index-url": "UV_EXTRA_INDEX_URL", "find-links": "UV_FIND_LINKS",
            "constraint": "UV_CONSTRAINT", "cert": "SSL_CERT_FILE"}
values = {}
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    name = uv_names.get(key.rsplit(".", 1)[-1])
    if name:
        values[name] = " ".join(value.strip("\x27\"").split())
if "UV_FIND_LINKS" in values:  # uv takes find-links comma-separated, the others space-separated
    values["UV_FIND_LINKS"] = values["UV_FIND_LINKS"].replace(" ", ",")
for name, value in values.items():
    print(f"export {name}={shlex.quote(value)}")
'
}

if [ "${RNET_HUB_SETUP_PIP:-0}" != 1 ] && .venv/bin/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1; then
  eval "$(uv_environment)"
  # unsafe-best-match: take the best version from any index, as pip does
  .venv/bin/uv pip install -q --python .venv/bin/python --index-strategy unsafe-best-match --compile-bytecode \
    "${REQUIREMENTS[@]}"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
fi

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
