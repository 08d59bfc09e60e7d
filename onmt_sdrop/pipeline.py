"""One recipe pipeline for every language pair: baseline vs structured dropout, same everything
else. The entry point (``python -m onmt_sdrop.pipeline``, behind ``recipes/run.sh``); the code
lives in :mod:`onmt_sdrop.recipe` (catalogue, process control, stages, command line)."""
from __future__ import annotations

from .recipe.catalogue import MODELS, PAIRS, PROFILES, Pair, Profile  # noqa: F401
from .recipe.cli import device_name, main  # noqa: F401
from .recipe.stages import Pipeline  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
