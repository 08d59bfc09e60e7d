#!/usr/bin/env python
"""Kernel-launch proxy on a CPU: aten ops per training step, stock vs our dense vs our compact path.

On a GPU nearly every aten op that does work is a kernel launch, and at the default size the step
is launch-bound, so the count of aten ops per training step is a proxy for launches that any
machine can measure. One step (forward, generator, NLL loss, backward, SGD update) of the default
model on one fixed IWSLT-sized batch is run under the torch profiler after two warm-up steps:

  top_level     aten ops not called from inside another aten op
  all           every aten op
  launch_proxy  top-level ops less those that only make views or allocate (no kernel on a GPU);
                a CUDA-kernel launch counts as one

``sdrop_compact_cuda`` is the compacted path with the CUDA backend, its launches carried out on
the CPU by tests/kernel_emulator.py (each counted as the one launch it is on a GPU).

    python bench/op_count.py [--hidden 500] [--batch 64] [--out bench/results/ops-<date>.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cpu_bench  # noqa: E402  (also installs the onmt hook)
import kernel_emulator  # noqa: E402
from onmt_sdrop.ops import torch_backend  # noqa: E402

VARIANTS = {k: v for k, v in cpu_bench.VARIANTS.items() if k != "sdrop_compact_m4"}
VARIANTS["sdrop_compact_cuda"] = VARIANTS["sdrop_compact"][:-1] + ["cupy"]


# ops that make a view, allocate or do nothing: no kernel launch on a GPU
NO_LAUNCH = {"aten::" + n for n in (
    "select", "slice", "unsqueeze", "squeeze", "view", "reshape", "_reshape_alias", "t",
    "transpose", "permute", "expand", "alias", "as_strided", "chunk", "split", "unbind", "narrow",
    "detach", "detach_", "resolve_conj", "resolve_neg", "empty", "empty_like", "new_empty",
    "empty_strided", "lift_fresh", "_unsafe_view", "view_as", "expand_as", "contiguous",
    "result_type", "is_nonzero", "size", "stride", "numel", "dim", "flatten", "unflatten",
    "to", "_to_copy_noop", "type_as")}
LAUNCH = "cuda_kernel_launch"


def count_ops(events) -> dict:
    """{"top_level", "all", "launch_proxy"} over the profiler's events."""
    aten = [e for e in events if e.name.startswith("aten::")]
    top = launch = 0
    for e in aten:
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::") \
                and parent.name != LAUNCH:
            parent = parent.cpu_parent
        if parent is None:
            top += 1
            # "to" copies when the dtype or device changes: count it then
            launch += e.name not in NO_LAUNCH or (e.name == "aten::to" and any(
                c.name == "aten::_to_copy" for c in e.cpu_children))
    launch += sum(e.name == LAUNCH for e in events)
    return {"top_level": top, "all": len(aten), "launch_proxy": launch}


def counted_launch(*args):
    """An emulated CUDA-kernel launch, marked in the profile as the one launch it is on a GPU."""
    with record_function(LAUNCH):
        kernel_emulator.launch(*args)


def step_counts(variants, *, hidden, layers, batch, vocab, dropout, mean_len=24, seed=0,
                log=print):
    common = cpu_bench.model_args(hidden=hidden, layers=layers, dropout=dropout)
    src, tgt, sl, ntok = cpu_bench.batches(1, batch, vocab, seed=seed, mean_len=mean_len)[0]
    out = {"batch": {"sentences": batch, "src_steps": src.shape[1], "tgt_steps": tgt.shape[1] - 1,
                     "tgt_tokens": ntok}}
    for name, extra in variants.items():
        cuda = "cupy" in extra     # built with the torch backend, then run on the emulated one
        model = cpu_bench.build_variant(common + [("torch" if a == "cupy" else a) for a in extra],
                                        vocab)
        if cuda:
            kernel_emulator.use_cuda_backend([model], launch_with=counted_launch)
        optim = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            cpu_bench.train_step(model, optim, src, tgt, sl)
        # side-by-side GEMMs (CPU, several threads; never on a GPU) would run on worker threads,
        # which the profiler does not record
        with torch_backend.on_this_thread(), profile(activities=[ProfilerActivity.CPU]) as prof:
            cpu_bench.train_step(model, optim, src, tgt, sl)
        out[name] = count_ops(prof.events())
        log(f"{name}: {out[name]}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--mean-len", type=float, default=24, help="sentence length the batch is "
                    "drawn around (bench/cpu_bench.py's batches)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/ops-<date>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = step_counts(VARIANTS, hidden=args.hidden, layers=args.layers, batch=args.batch,
                         vocab=args.vocab, dropout=args.dropout, mean_len=args.mean_len)
    result = {"what": "aten ops per training step (torch profiler, CPU): a launch proxy",
              "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "command": "python bench/op_count.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
              "config": {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab,
                         "dropout": args.dropout},
              "counts": counts}
    out = Path(args.out or Path(__file__).parent / "results" / f"ops-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
