"""Several translations in one process (one start of torch and OpenNMT-py, not one each): the
pipeline's test translation and the per-checkpoint valid translations of the BLEU-vs-time plot.

    python -m onmt_sdrop.recipe.translate_many JOBS.json [onmt_translate options for every job]

JOBS.json: a list of option lists, one per translation (each with its -model, -src, -output).
"""
from __future__ import annotations

import importlib
import json
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        jobs = json.load(fh)
    common = argv[1:]
    from .. import hook

    hook.install()
    mod = importlib.import_module("onmt.bin.translate")
    from ..patches import run_cli

    for job in jobs:
        opt = mod._get_parser().parse_args(common + list(job))
        run_cli(mod.translate, "onmt_translate", opt)
        print(f"translated: {' '.join(job)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
