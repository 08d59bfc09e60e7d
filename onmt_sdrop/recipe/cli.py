"""The command line of the recipe pipeline (``python -m onmt_sdrop.pipeline``): every bad option
is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..errors import SdropError
from .catalogue import MODELS, PAIRS, PROFILES, parse_models
from .stages import Pipeline
from . import stages


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def device_name(gpu: bool) -> str:
    import platform

    if gpu:
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _profiles_help() -> str:
    return "; ".join(f"{p.name}: {p.train_steps} steps" + (f", only {', '.join(p.pairs)}"
                                                           if p.pairs else "")
                     for p in PROFILES.values())


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m onmt_sdrop.pipeline", description=stages.__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair", choices=sorted(PAIRS))
    ap.add_argument("--profile", default="cpu-small", choices=sorted(PROFILES),
                    help=_profiles_help())
    ap.add_argument("--raw", required=True, help="folder with the raw corpus files")
    ap.add_argument("--work", required=True, help="working folder (checkpoints, encoded data)")
    ap.add_argument("--out", required=True, help="where report.md, summary.json, curves.png go")
    ap.add_argument("--steps", type=_positive(int),
                    help="training steps per model (default: the profile's)")
    ap.add_argument("--time-budget", type=_positive(float), metavar="MIN",
                    help="training wall-clock minutes per model (stops at the first finished "
                         "checkpoint past it; --steps stays the upper bound)")
    ap.add_argument("--gpu", action="store_true", help="train and translate on GPU 0")
    ap.add_argument("--models", default="baseline,sdrop",
                    help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--valid-bleu", action=argparse.BooleanOptionalAction, default=None,
                    help="greedy valid BLEU at every checkpoint and the BLEU-vs-time plot "
                         "(default: on for the GPU profiles)")
    ap.add_argument("--seed", type=int, help="training seed (runs go to <model>-seed<N>)")
    ap.add_argument("--extra", default="", help="more onmt_train options for both models")
    ap.add_argument("--prepare-only", action="store_true",
                    help="only the prepare and spm stages (so that runs can share them)")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    command = "python -m onmt_sdrop.pipeline " + " ".join(shlex.quote(a) for a in argv)
    try:
        pipe = Pipeline(args.pair, args.profile, args.raw, args.work, args.out, steps=args.steps,
                        time_budget_min=args.time_budget, gpu=args.gpu,
                        extra_args=shlex.split(args.extra), models=parse_models(args.models),
                        valid_bleu=args.valid_bleu, seed=args.seed)
        if args.prepare_only:
            pipe.prepare()
            pipe.spm()
        else:
            pipe.run(command, device_name(args.gpu))
    except SdropError as exc:
        print(f"pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    return 0
