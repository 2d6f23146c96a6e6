"""``python -m rnet_hub.cli``: the console script."""

from . import run

run()
