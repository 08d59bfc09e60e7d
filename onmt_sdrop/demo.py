"""``make demo``: baseline vs structured dropout on the bundled IWSLT'14 De-En sample.

The recipe pipeline with the ``demo`` profile: trains both models with the same hyper-parameters
for a short CPU budget, translates the sample's test part with each model's best checkpoint on
validation, and writes ``demo/report.md`` (tokenized BLEU, BLEU, chrF, tok/s, time, speed-up),
``demo/curves.png``, ``demo/bleu_time.png`` (greedy valid BLEU at every checkpoint against time),
``demo/summary.json`` and ``demo/evidence/`` (hypotheses, scores, logs). Work files: ``demo/work``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .pipeline import main as pipeline_main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "iwslt14-sample"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onmt_sdrop.demo", description=__doc__)
    ap.add_argument("--out", default="demo", help="report folder (work files go in OUT/work)")
    ap.add_argument("--steps", type=int, help="training steps per model (default 400)")
    ap.add_argument("--profile", default="demo")
    args = ap.parse_args(argv)
    out = Path(args.out)
    cmd = ["sample-deen", "--profile", args.profile, "--raw", str(SAMPLE),
           "--work", str(out / "work"), "--out", str(out)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    return pipeline_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
