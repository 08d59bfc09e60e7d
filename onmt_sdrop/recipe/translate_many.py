"""Translate with several checkpoints in one process (the per-checkpoint valid BLEU of the
BLEU-vs-time plot: one interpreter start and one import of torch and OpenNMT-py, not one each).

    python -m onmt_sdrop.recipe.translate_many MODEL OUT [MODEL OUT ...] -- [onmt_translate options]
"""
from __future__ import annotations

import importlib
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") % 2 or argv.index("--") == 0:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    cut = argv.index("--")
    jobs, common = list(zip(argv[:cut:2], argv[1:cut:2])), argv[cut + 1:]
    from .. import hook

    hook.install()
    mod = importlib.import_module("onmt.bin.translate")
    from ..patches import run_cli

    for model, out in jobs:
        opt = mod._get_parser().parse_args(common + ["-model", model, "-output", out])
        run_cli(mod.translate, "onmt_translate", opt)
        print(f"translated with {model} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
