#!/usr/bin/env python
"""GPU benchmarks for the CUDA backend, in one run (see bench/gpu_check.sh).

results: training tok/s of stock OpenNMT-py, sdrop dense and sdrop compacted (CUDA kernels), each
         sdrop variant eager and with CUDA graphs, fp32 and fp16 (AMP), default size (2x500, batch
         64) and large (1024, batch 256), with GPU kernel ms, kernel launches per step, the
         kernels that take the most GPU time ("top_kernels": name, ms and launches per step;
         torch profiler) and peak memory; "graphs_fell_back_to_eager" marks a graphed variant
         whose capture failed (it then ran eagerly). Measured first: it is what a user sees.
micro:   each of the six compacted GEMMs (consumer fwd/dx/dw at the generator's shape, producer
         fwd/dx/dw at the attention output layer's) with every kernel choice of the CUDA backend
         (cupy_backend.GEMM_KERNELS, or those of --micro-kernels, and DW_KERNELS on the weight
         gradients: field "kernel", and "runs" = the kernels one call launched) against cuBLAS on
         the dense tensors of the same shape, at p 0.3, the default and the large size, fp32 and
         fp16; every op timed with CUDA events over a CUDA graph of --micro-reps calls (eager if
         capture fails: the row says so), the per-batch weight permutation timed once on its own
         row.
Writes OUT/gpu-<date>.json after every stage, so a timeout keeps what finished:
{"device", "torch", "date", "results": [...], "micro": [...]} (rows as in issue 9, micro rows
with "kernel" and "runs" added). --gemm-kernel / --dw-kernel pick the kernels of the training
runs; --no-e2e leaves them out.

--dry-run runs the same code on the CPU at toy sizes with the torch backend in place of the CUDA
kernels (fp32 only, wall-clock timing, no profiler), so a broken benchmark is found here and not
on the GPU's time (tests/test_bench.py does it).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cpu_bench  # noqa: E402  (also installs the onmt hook)

from onmt_sdrop.masks import sample_step_mask  # noqa: E402

SIZES = {"default": dict(hidden=500, batch=64), "large": dict(hidden=1024, batch=256)}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def e2e_variants(backend: str, with_graphs: bool, kernels=None, keep=None) -> dict:
    """stock / sdrop dense / sdrop compacted with ``backend``, as options for the model builder;
    with ``with_graphs`` also dense and compacted under CUDA graphs (-sdrop_cuda_graphs 1).
    ``kernels``: GEMM+DW kernel pairs of the CUDA backend, one compacted variant each (named
    ``sdrop_compact@tensor+tiles``; see :func:`kernel_choice`; a flag ``alignN`` trains it with
    ``-sdrop_window_align N``). ``keep``: the variants to keep, by their row names (stock, dense,
    compact, dense+graphs, compact+graphs)."""
    variants = {k: v for k, v in cpu_bench.VARIANTS.items() if k != "sdrop_compact_m4"}
    compact = variants.pop("sdrop_compact")[:-1] + [backend]
    for pair in kernels or [None]:
        align = [f[5:] for f in (pair or "").split("+") if f.startswith("align")]
        variants["sdrop_compact" + (f"@{pair}" if pair else "")] = compact + (
            ["-sdrop_window_align", align[0]] if align else [])
    if with_graphs:
        for name in list(variants):
            if name != "stock":
                variants[name + "+graphs"] = variants[name] + ["-sdrop_cuda_graphs", "1"]
    if keep:
        variants = {k: v for k, v in variants.items() if row_name(k) in keep}
    return variants


def row_name(variant: str) -> str:
    """``sdrop_compact@cublas+cublas+graphs`` -> ``compact+graphs``."""
    name = variant.replace("sdrop_", "")
    if "@" in name:
        name = name.split("@")[0] + ("+graphs" if name.endswith("+graphs") else "")
    return name


def variant_kernels(variant: str):
    """The GEMM+DW kernel pair a variant names after "@", or None."""
    if "@" not in variant:
        return None
    pair = variant.split("@")[1].removesuffix("+graphs")
    return pair


ONE_GROUP_FLAGS = ("kernel", "nosplit")   # flags after a kernel pair: the one-group GEMMs' path


@contextlib.contextmanager
def kernel_choice(cu, variant: str):
    """The CUDA backend's GEMM_KERNEL / DW_KERNEL set to the pair ``variant`` names, while its
    steps run (graphs capture the kernels chosen at capture time; the generator reads them at
    every step). Flags after the pair, for the one-group GEMMs (the input-feed decoder's per-step
    calls): ``kernel`` = GEMM_KERNEL with split K instead of the gathered window and cuBLAS
    (ONE_GROUP_GEMM), ``nosplit`` = GEMM_KERNEL as one launch each (split K off too)."""
    pair = variant_kernels(variant)
    if pair is None or not hasattr(cu, "GEMM_KERNEL"):
        yield
        return
    gemm, dw, *flags = pair.split("+")
    saved = cu.GEMM_KERNEL, cu.DW_KERNEL, cu.SPLIT_K_BLOCKS, cu.ONE_GROUP_GEMM
    cu.GEMM_KERNEL, cu.DW_KERNEL = gemm, dw
    if any(f in ONE_GROUP_FLAGS for f in flags):
        cu.ONE_GROUP_GEMM = "kernel"
    if "nosplit" in flags:
        cu.SPLIT_K_BLOCKS = 0
    try:
        yield
    finally:
        cu.GEMM_KERNEL, cu.DW_KERNEL, cu.SPLIT_K_BLOCKS, cu.ONE_GROUP_GEMM = saved


def time_ms(fn, device, reps) -> tuple[float, str]:
    """(ms per call, how): CUDA events over a graph of ``reps`` calls on a GPU, else wall clock."""
    if device != "cuda":
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e3, "wall"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()                                   # warm-up: kernels loaded, allocator primed
    torch.cuda.current_stream().wait_stream(side)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        start.record()
        graph.replay()
        end.record()
        how = "graph"
    except Exception as exc:  # noqa: BLE001 - report, then time eagerly
        print(f"graph capture failed ({exc}); timing eagerly", flush=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        how = "eager"
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, how


def kernel_choices(cu, gemm_kernels=None) -> list[tuple[str, str]]:
    """(GEMM_KERNEL, DW_KERNEL) pairs to time: every GEMM kernel of the CUDA backend (or those of
    ``gemm_kernels``) with its default weight-gradient form, and each other dW form (the torch
    backend: one)."""
    if not hasattr(cu, "GEMM_KERNELS"):
        return [("torch", "torch")]
    kernels = [g for g in cu.GEMM_KERNELS if gemm_kernels is None or g in gemm_kernels]
    return [(g, cu.DW_KERNEL) for g in kernels] + \
        [(g, d) for g in kernels for d in cu.DW_KERNELS if d != cu.DW_KERNEL]


def launched_by(cu, fn) -> str:
    """The kernels one call of ``fn`` launches (names, "cublas" for a batched cuBLAS call, "torch"
    for none of ours), untimed."""
    if not hasattr(cu, "_launch"):
        return "torch"
    names, launch, batched = [], cu._launch, cu._cublas_batched
    cu._launch = lambda module, name, *a: (names.append(name), launch(module, name, *a))
    cu._cublas_batched = lambda *a, **k: (names.append("cublas"), batched(*a, **k))
    try:
        fn()
    finally:
        cu._launch, cu._cublas_batched = launch, batched
    return ",".join(dict.fromkeys(names)) or "torch"   # DW_KERNEL cublas: torch.mm


def gemm_cases(ops, m, x, w_c, dy, xp, w_p, dyp):
    """The six grouped GEMMs of backend ``ops`` as calls on its own layouts (its gathered inputs,
    its permuted weights, float32 weight-gradient buffers)."""
    xc, dyc = ops.gather(x, m), ops.gather(dyp, m)
    wc_ext, wp_ext = ops.permute_weight(w_c, m, 1).ext, ops.permute_weight(w_p, m, 0).ext
    dw_c = torch.zeros(wc_ext.shape, device=x.device)
    dw_p = torch.zeros(wp_ext.shape, device=x.device)
    return {
        "consumer_fwd": lambda: ops.consumer_fwd(xc, wc_ext, m),
        "consumer_dx": lambda: ops.consumer_dx(dy, wc_ext, m),
        "consumer_dw": lambda: ops.consumer_dw(dy, xc, m, dw_c),
        "producer_fwd": lambda: ops.producer_fwd(xp, wp_ext, m),
        "producer_dx": lambda: ops.producer_dx(dyc, wp_ext, m),
        "producer_dw": lambda: ops.producer_dw(dyc, xp, m, dw_p),
    }


def micro(cu, device, *, size, precision, hidden, batch, steps, vocab, p=0.3, reps=10,
          kernels=None, align=1):
    """Rows for the six grouped GEMMs, for every kernel choice of the backend (field "kernel":
    GEMM_KERNEL, or GEMM_KERNEL+DW_KERNEL on the weight-gradient rows; "runs": the kernels one
    call launched), on a GPU also the torch backend's per-step cuBLAS GEMMs (kernel "torch": a
    graph of them is possible here because the mask stays fixed), each against cuBLAS on the
    dense shape, and the weight permutation. ``align``: the masks' window alignment
    (``-sdrop_window_align``; 8 lets cuBLAS take fp16)."""
    from onmt_sdrop.ops import torch_backend

    dtype = PRECISIONS[precision]
    m = sample_step_mask(steps, hidden, p, align=align).to(device)
    rnd = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    # consumer: the generator (hidden -> vocab); producer: attention output (2 hidden -> hidden)
    x, w_c, dy = rnd(steps, batch, hidden), rnd(vocab, hidden), rnd(steps, batch, vocab)
    xp, w_p, dyp = rnd(steps, batch, 2 * hidden), rnd(hidden, 2 * hidden), rnd(steps, batch, hidden)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    dense_cases = {
        "consumer_fwd": lambda: flat(x) @ w_c.t(), "consumer_dx": lambda: flat(dy) @ w_c,
        "consumer_dw": lambda: flat(dy).t() @ flat(x), "producer_fwd": lambda: flat(xp) @ w_p.t(),
        "producer_dx": lambda: flat(dyp) @ w_p, "producer_dw": lambda: flat(dyp).t() @ flat(xp)}
    dense = {gemm: time_ms(fn, device, reps) for gemm, fn in dense_cases.items()}   # cuBLAS
    tensors = (m, x, w_c, dy, xp, w_p, dyp)
    choices = [(cu, g, d) for g, d in kernel_choices(cu, kernels)]
    if cu is not torch_backend:
        choices.append((torch_backend, "torch", "torch"))
    rows = []
    for ops, gemm_kernel, dw_kernel in choices:
        switched = hasattr(ops, "GEMM_KERNEL")   # the CUDA backend (the torch backend: one form)
        saved = getattr(ops, "GEMM_KERNEL", None), getattr(ops, "DW_KERNEL", None)
        if switched:
            ops.GEMM_KERNEL, ops.DW_KERNEL = gemm_kernel, dw_kernel
        try:
            cases = gemm_cases(ops, *tensors)
            for gemm, compact in cases.items():
                is_dw = gemm.endswith("_dw")
                if not is_dw and switched and dw_kernel != saved[1]:
                    continue                    # forward / dX rows once per GEMM kernel
                try:
                    runs = launched_by(ops, compact)
                    c_ms, how_c = time_ms(compact, device, reps)
                except Exception as exc:  # noqa: BLE001 - a kernel that fails is a result too
                    print(f"{gemm} with {gemm_kernel}/{dw_kernel} failed: {exc}", flush=True)
                    rows.append({"gemm": gemm, "part": gemm.split("_")[1], "kernel": gemm_kernel,
                                 "size": size,
                                 "precision": precision, "error": str(exc)[:300]})
                    continue
                d_ms, how_d = dense[gemm]
                rows.append({"gemm": gemm, "part": gemm.split("_")[1], "size": size,
                             "precision": precision, "p": p, "align": align,
                             "kernel": f"{gemm_kernel}+{dw_kernel}" if is_dw and switched
                             else gemm_kernel,
                             "runs": runs, "dense_ms": round(d_ms, 4),
                             "compact_ms": round(c_ms, 4), "speedup": round(d_ms / c_ms, 3),
                             "ideal": round(1 / (1 - p), 3),
                             "of_ideal": round(d_ms / c_ms * (1 - p), 3),
                             "timed": how_c if how_c == how_d else f"{how_c}/{how_d}",
                             "shape": {"steps": steps, "batch": batch, "hidden": hidden,
                                       "out": vocab if gemm.startswith("consumer") else hidden}})
                print(rows[-1], flush=True)
        finally:
            if switched:
                ops.GEMM_KERNEL, ops.DW_KERNEL = saved
    perm_ms, how = time_ms(lambda: cu.permute_weight(w_c, m, 1), device, reps)
    rows.append({"gemm": "permute_weight (generator, once per batch)", "part": "prep",
                 "size": size, "precision": precision, "p": p, "kernel": "torch",
                 "dense_ms": 0.0, "compact_ms": round(perm_ms, 4), "speedup": None,
                 "ideal": None, "of_ideal": None, "timed": how})
    return rows


TOP_KERNELS = 8


def profile_steps(variants, *, device, amp, steps=3, around=None, **cfg):
    """{variant: (gpu kernel ms per step, launches per step, peak MB, the TOP_KERNELS kernels by
    GPU time as [name, ms per step, launches per step])} from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    common = cpu_bench.model_args(hidden=cfg["hidden"], layers=cfg["layers"],
                                  dropout=cfg["dropout"])
    data = cpu_bench.batches(steps + 1, cfg["batch"], cfg["vocab"], device=device)
    around = around or (lambda name: contextlib.nullcontext())
    out = {}
    for name, extra in variants.items():
        model = cpu_bench.build_variant(common + extra, cfg["vocab"], device)
        optim = torch.optim.SGD(model.parameters(), lr=0.1)
        with around(name):
            cpu_bench.train_step(model, optim, *data[0][:3], amp)   # warm-up (and capture)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):                          # the same batch: no recapture
                    cpu_bench.train_step(model, optim, *data[0][:3], amp)
                torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        by_name = {}
        for e in kernels:
            ms, n = by_name.get(e.name, (0.0, 0))
            by_name[e.name] = (ms + e.device_time / 1e3, n + 1)
        top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
        out[name] = (round(sum(e.device_time for e in kernels) / 1e3 / steps, 3),
                     round(len(kernels) / steps, 1),
                     round(torch.cuda.max_memory_allocated() / 2**20, 1),
                     [[k[:120], round(ms / steps, 3), round(n / steps, 1)]
                      for k, (ms, n) in top])
        del model, optim
        torch.cuda.empty_cache()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=40, help="measured training steps per variant")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--no-graphs", action="store_true", help="leave out the CUDA-graph variants")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, toy sizes, torch backend: checks the script, measures nothing")
    ap.add_argument("--micro-reps", type=int, default=10,
                    help="calls per CUDA graph in each micro timing")
    ap.add_argument("--no-e2e", action="store_true", help="the micro benchmark only")
    ap.add_argument("--no-micro", action="store_true", help="the training runs only")
    ap.add_argument("--gemm-kernel", help="cupy_backend.GEMM_KERNEL for the training runs "
                    "(the micro benchmark times every choice)")
    ap.add_argument("--dw-kernel", help="cupy_backend.DW_KERNEL for the training runs")
    ap.add_argument("--micro-kernels", help="comma-separated GEMM_KERNEL choices the micro "
                    "benchmark times (default: all)")
    ap.add_argument("--e2e-kernels", help="comma-separated GEMM+DW kernel pairs (e.g. "
                    "tensor+tiles,tensor+tiles+kernel,cublas+cublas+align8; one-group GEMMs: "
                    "+kernel: GEMM_KERNEL with split K, +nosplit: without; +alignN: "
                    "-sdrop_window_align N): "
                    "one compacted training variant each, side by side (default: one, the "
                    "backend's choice)")
    ap.add_argument("--variants", help="comma-separated training variants to run (stock, dense, "
                    "compact, dense+graphs, compact+graphs; default: all; --dry-run runs "
                    "a +graphs variant eagerly)")
    ap.add_argument("--micro-align", type=int, default=1, help="window alignment of the micro "
                    "rows' masks (-sdrop_window_align; 8: cuBLAS can take fp16)")
    ap.add_argument("--precisions", default="fp32,fp16", help="comma-separated (fp32, fp16)")
    ap.add_argument("--sizes", default="default,large", help="comma-separated (default, large)")
    args = ap.parse_args(argv)
    micro_kernels = args.micro_kernels.split(",") if args.micro_kernels else None
    if args.dry_run:
        from onmt_sdrop.ops import torch_backend as cu

        device, backend, reps = "cpu", "torch", 2
        sizes = {"default": dict(hidden=24, batch=4), "large": dict(hidden=32, batch=6)}
        precisions = ["fp32"]
        base = dict(layers=2, vocab=50, dropout=0.3, warmup=1, rnd=1, device=device)
        name = "dry run on CPU (torch backend): not a measurement"
    else:
        from onmt_sdrop.ops import cupy_backend as cu

        device, backend, reps = "cuda", "cupy", args.micro_reps
        sizes = {k: SIZES[k] for k in args.sizes.split(",")}
        precisions = args.precisions.split(",")
        cu.GEMM_KERNEL = args.gemm_kernel or cu.GEMM_KERNEL
        cu.DW_KERNEL = args.dw_kernel or cu.DW_KERNEL
        base = dict(layers=2, vocab=10000, dropout=0.3, warmup=5, rnd=10, device=device)
        name = torch.cuda.get_device_name(0)
    if args.skip_large:
        sizes = {"default": sizes["default"]}
    pairs = args.e2e_kernels.split(",") if args.e2e_kernels else None
    for pair in pairs or []:
        g, d, *flags = pair.split("+")
        bad_flag = any(f not in ONE_GROUP_FLAGS and not (
            f.startswith("align") and f[5:].isdigit() and int(f[5:]) >= 1) for f in flags)
        if bad_flag or (device == "cuda" and (g not in cu.GEMM_KERNELS
                                              or d not in cu.DW_KERNELS)):
            ap.error(f"--e2e-kernels: {pair!r} is not GEMM+DW[+kernel|+nosplit][+alignN] of "
                     f"{getattr(cu, 'GEMM_KERNELS', '?')} x {getattr(cu, 'DW_KERNELS', '?')}")
    with_graphs = device == "cuda" and not args.no_graphs
    keep = args.variants.split(",") if args.variants else None
    row_names = list(dict.fromkeys(row_name(k) for k in e2e_variants(backend, True)))
    for v in keep or []:
        if v not in row_names:
            ap.error(f"--variants: {v!r} is not one of {', '.join(row_names)}")
        if v.endswith("+graphs") and args.no_graphs:
            ap.error(f"--variants: {v!r} with --no-graphs")
    if keep and args.dry_run:   # no graphs on the CPU: their eager forms, so every pair still runs
        keep = [v.removesuffix("+graphs") for v in keep]
    variants = e2e_variants(backend, with_graphs=with_graphs, kernels=pairs, keep=keep)
    around = lambda name: kernel_choice(cu, name)  # noqa: E731
    result = {"device": name, "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "command": "python bench/gpu_bench.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),
              "config": {"sizes": sizes, "p": base["dropout"], "layers": base["layers"],
                         "vocab": base["vocab"], "steps": args.steps,
                         "gemm_kernel": getattr(cu, "GEMM_KERNEL", "torch"),
                         "dw_kernel": getattr(cu, "DW_KERNEL", "torch")},
              "results": [], "micro": []}
    out = Path(args.out) / f"{'dry-run' if args.dry_run else 'gpu'}-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(stage):
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[{stage}] wrote {out}", flush=True)

    for size, dims in ({} if args.no_e2e else sizes).items():
        steps = args.steps if size == "default" else max(5, args.steps // 3)
        for precision in precisions:
            cfg = dict(base, steps=steps, **dims)
            amp = precision == "fp16"
            fell_back = set()
            tok_s = cpu_bench.measure(variants, amp=amp, graphs_fell_back=fell_back,
                                      around=around, **cfg)
            prof = profile_steps(variants, amp=amp, around=around, **cfg) \
                if device == "cuda" else {}
            for variant, value in tok_s.items():
                gpu_ms, launches, peak, top = prof.get(variant, (None, None, None, None))
                result["results"].append({
                    "size": size, "precision": precision,
                    "variant": row_name(variant).replace("+graphs", ""),
                    "kernels": variant_kernels(variant) or result["config"]["gemm_kernel"] + "+"
                    + result["config"]["dw_kernel"] if "compact" in variant else None,
                    "graphs": variant.endswith("+graphs"), "tok_s": value,
                    "graphs_fell_back_to_eager": variant in fell_back,
                    "gpu_ms_per_step": gpu_ms, "launches_per_step": launches,
                    "peak_mem_mb": peak, "top_kernels": top})
            save(f"e2e {size} {precision}")
    # then the micro rows (training first: it is what a user sees)
    for size, dims in ({} if args.no_micro else sizes).items():
        for precision in precisions:
            result["micro"] += micro(cu, device, size=size, precision=precision, steps=30,
                                     vocab=base["vocab"], reps=reps, kernels=micro_kernels,
                                     align=args.micro_align, **dims)
            save(f"micro {size} {precision}")
    print(json.dumps([(r["size"], r["precision"], r["variant"], r["tok_s"])
                      for r in result["results"]]))


if __name__ == "__main__":
    main()
