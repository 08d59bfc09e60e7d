#!/usr/bin/env python
"""GPU benchmarks for the CUDA backend, in one run (see bench/gpu_check.sh).

micro: each compacted kernel (forward, dX, dW) against cuBLAS on the dense tensors of the same
       shape (torch.matmul), at dropout 0.1 / 0.3 / 0.5, for the default model's real shapes;
       time ratios next to the ideal 1/(1-p).
e2e:   training tok/s of stock OpenNMT-py, sdrop dense and sdrop compacted (CUDA kernels), fp32 and
       fp16 (AMP), at the default size and at a compute-bound size (hidden 1024, batch 256).
Writes OUT/gpu-<date>.json.

--dry-run runs the same code on the CPU at toy sizes with the torch backend in place of the CUDA
kernels (no fp16), so a broken benchmark is found here and not on the GPU's time
(tests/test_bench.py does it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cpu_bench  # noqa: E402  (also installs the onmt hook)

from onmt_sdrop.masks import sample_step_mask  # noqa: E402


def e2e_variants(backend: str) -> dict:
    """stock / sdrop dense / sdrop compacted with ``backend``, as options for the model builder."""
    variants = {k: v for k, v in cpu_bench.VARIANTS.items() if k != "sdrop_compact_m4"}
    variants["sdrop_compact"] = variants["sdrop_compact"][:-1] + [backend]
    return variants


def timed(fn, device, reps=20):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def micro(cu, device="cuda", batch=64, steps=30, hidden=500, vocab=10000, reps=20):
    """(name, p, dense ms, compact ms, ratio, ideal) for the default model's consumer GEMMs,
    with ``cu`` the backend module under test."""
    shapes = {"enc_input_proj (all steps, 2 dirs)": (steps, hidden, 4 * hidden),
              "dec_input_feed (1 step)": (1, hidden, 4 * hidden),
              "generator (all steps)": (steps, hidden, vocab)}
    rows = []
    for name, (g, h, n) in shapes.items():
        for p in (0.1, 0.3, 0.5):
            m = sample_step_mask(g, h, p).to(device)
            x = torch.randn(g, batch, h, device=device)
            w = torch.randn(n, h, device=device)
            dy = torch.randn(g, batch, n, device=device)
            xc = cu.gather(x, m)
            ww = cu.permute_weight(w, m, 1)
            dense = {"fwd": lambda: x.view(-1, h) @ w.t(),
                     "dx": lambda: dy.view(-1, n) @ w,
                     "dw": lambda: dy.view(-1, n).t() @ x.view(-1, h)}
            xr = xc.clone().requires_grad_(True)
            wr = w.clone().requires_grad_(True)
            comp = {"fwd": lambda: cu.compact_matmul(xc, ww, m),
                    # the per-batch weight permutation is included in fwd+bwd
                    "fwd+bwd": lambda: torch.autograd.grad(
                        cu.compact_matmul(xr, cu.permute_weight(wr, m, 1), m), (xr, wr), dy)}
            d_fwd = timed(dense["fwd"], device, reps)
            d_all = d_fwd + timed(dense["dx"], device, reps) + timed(dense["dw"], device, reps)
            c_fwd, c_all = timed(comp["fwd"], device, reps), timed(comp["fwd+bwd"], device, reps)
            for part, d, c in (("fwd", d_fwd, c_fwd), ("fwd+bwd", d_all, c_all)):
                rows.append({"gemm": name, "part": part, "p": p, "dense_ms": round(d * 1e3, 4),
                             "compact_ms": round(c * 1e3, 4), "speedup": round(d / c, 3),
                             "ideal": round(1 / (1 - p), 3),
                             "of_ideal": round((d / c) / (1 / (1 - p)), 3)})
            print(rows[-2], rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, toy sizes, torch backend: checks the script, measures nothing")
    args = ap.parse_args(argv)
    if args.dry_run:
        from onmt_sdrop.ops import torch_backend as cu

        device, backend, reps = "cpu", "torch", 2
        cfg = dict(hidden=24, layers=2, batch=4, vocab=50, dropout=0.3, steps=args.steps,
                   warmup=1, rnd=1, device=device)
        large = dict(cfg, hidden=32, batch=6)
        name = "dry run on CPU (torch backend): not a measurement"
    else:
        from onmt_sdrop.ops import cupy_backend as cu

        device, backend, reps = "cuda", "cupy", 20
        cfg = dict(hidden=500, layers=2, batch=64, vocab=10000, dropout=0.3, steps=args.steps,
                   warmup=5, rnd=10, device=device)
        large = dict(cfg, hidden=1024, batch=256, steps=max(10, args.steps // 3))
        name = torch.cuda.get_device_name(0)
    variants = e2e_variants(backend)
    result = {"device": name, "torch": torch.__version__,
              "date": dt.date.today().isoformat(), "config": {k: v for k, v in cfg.items()}}
    result["micro"] = micro(cu, device, batch=cfg["batch"], steps=min(30, 3 * cfg["steps"]),
                            hidden=cfg["hidden"], vocab=cfg["vocab"], reps=reps)
    result["tok_s"] = cpu_bench.measure(variants, **cfg)
    # autocast to float16 is a GPU path; the CPU dry run leaves it out
    result["tok_s_fp16"] = cpu_bench.measure(variants, amp=True, **cfg) if device == "cuda" else {}
    if not args.skip_large:
        result["large"] = {"config": large, "tok_s": cpu_bench.measure(variants, **large)}
    out = Path(args.out) / f"{'dry-run' if args.dry_run else 'gpu'}-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "tok_s", "tok_s_fp16")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
