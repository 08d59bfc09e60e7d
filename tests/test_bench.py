"""The benchmarks run end to end at toy sizes, so a broken script is found here, not on the GPU's
time: gpu_bench --dry-run is the GPU benchmark's own code on the CPU with the torch backend."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import cpu_bench  # noqa: E402
import gpu_bench  # noqa: E402


def test_gpu_bench_dry_run_writes_the_issue_layout(tmp_path):
    gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--steps", "2"])
    (out,) = tmp_path.glob("dry-run-*.json")
    result = json.loads(out.read_text())
    assert {"device", "torch", "date", "results", "micro"} <= set(result)
    assert "not a measurement" in result["device"]
    # one row per size, precision and variant (fp32 only in the dry run)
    keys = {(r["size"], r["precision"], r["variant"]) for r in result["results"]}
    assert keys == {(s, "fp32", v) for s in ("default", "large")
                    for v in ("stock", "dense", "compact")}
    for row in result["results"]:
        assert {"graphs", "tok_s", "gpu_ms_per_step", "launches_per_step", "peak_mem_mb"} <= set(row)
        assert row["tok_s"] > 0
    # the six grouped GEMMs at both sizes, plus the permutation, each against dense
    gemms = [r for r in result["micro"] if r["part"] != "prep"]
    assert {(r["gemm"], r["size"]) for r in gemms} == {
        (f"{side}_{part}", s) for side in ("consumer", "producer") for part in ("fwd", "dx", "dw")
        for s in ("default", "large")}
    for row in gemms:
        assert row["dense_ms"] > 0 and row["compact_ms"] > 0
        assert abs(row["ideal"] - 1 / (1 - row["p"])) < 1e-3
        assert row["of_ideal"] == round(row["dense_ms"] / row["compact_ms"] * (1 - row["p"]), 3) \
            or abs(row["of_ideal"] - row["speedup"] * (1 - row["p"])) < 2e-3


def test_cpu_bench_writes_ratios(tmp_path):
    out = tmp_path / "cpu.json"
    cpu_bench.main(["--steps", "1", "--warmup", "1", "--round", "1", "--hidden", "16",
                    "--batch", "3", "--vocab", "40", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["tok_s"]) == set(cpu_bench.VARIANTS)
    assert result["ratios"]["compact_vs_dense"] == round(
        result["tok_s"]["sdrop_compact"] / result["tok_s"]["sdrop_dense"], 3)


def test_graph_buckets_counts_shapes_and_lru_misses(capsys):
    import graph_buckets

    assert graph_buckets.misses(list("abca"), 2) == 4      # a is evicted before it returns
    assert graph_buckets.misses(list("abca"), 3) == 3
    keys = graph_buckets.shapes([3, 9, 17, 4], [5, 7, 30, 2], batch=2, bucket_size=4, epochs=2)
    assert sorted(set(keys)) == [(8, 8), (24, 32)]          # padded to 8, target + BOS/EOS
    sample = Path(__file__).resolve().parents[1] / "data" / "iwslt14-sample"
    assert graph_buckets.main([str(sample / "train.de"), str(sample / "train.en"),
                               "--capacity", "2,1000"]) == 0
    out = capsys.readouterr().out.splitlines()
    n = int(out[0].split(", ")[-1].split()[0])
    assert out[2].split(": ")[1].startswith(f"{n} captures")   # a cache that holds all: one each
    assert graph_buckets.main(["/no/such/file", "x"]) == 2


def test_gpu_bench_compares_kernel_pairs_side_by_side(tmp_path, monkeypatch):
    """--e2e-kernels: one compacted variant per GEMM+DW pair, each run with its pair set in the
    CUDA backend (and the choice restored after), rows saying which; --variants keeps some."""
    from onmt_sdrop.ops import cupy_backend

    variants = gpu_bench.e2e_variants("cupy", True,
                                      kernels=["tensor+tiles", "cublas+cublas+align8"],
                                      keep=["stock", "compact+graphs"])
    assert list(variants) == ["stock", "sdrop_compact@tensor+tiles+graphs",
                              "sdrop_compact@cublas+cublas+align8+graphs"]
    assert "-sdrop_window_align" not in variants["sdrop_compact@tensor+tiles+graphs"]
    assert variants["sdrop_compact@cublas+cublas+align8+graphs"][-4:] == [
        "-sdrop_window_align", "8", "-sdrop_cuda_graphs", "1"]
    assert gpu_bench.row_name("sdrop_compact@cublas+cublas+graphs") == "compact+graphs"
    before = cupy_backend.GEMM_KERNEL, cupy_backend.DW_KERNEL
    split = cupy_backend.SPLIT_K_BLOCKS
    with gpu_bench.kernel_choice(cupy_backend, "sdrop_compact@cublas+atomic+graphs"):
        assert (cupy_backend.GEMM_KERNEL, cupy_backend.DW_KERNEL) == ("cublas", "atomic")
        assert cupy_backend.SPLIT_K_BLOCKS == split
    with gpu_bench.kernel_choice(cupy_backend, "sdrop_compact@tensor+tiles+nosplit+graphs"):
        assert (cupy_backend.GEMM_KERNEL, cupy_backend.SPLIT_K_BLOCKS) == ("tensor", 0)
        assert cupy_backend.ONE_GROUP_GEMM == "kernel"
    with gpu_bench.kernel_choice(cupy_backend, "sdrop_compact@tensor+tiles+kernel+graphs"):
        assert (cupy_backend.ONE_GROUP_GEMM, cupy_backend.SPLIT_K_BLOCKS) == ("kernel", split)
    assert (cupy_backend.GEMM_KERNEL, cupy_backend.DW_KERNEL) == before
    assert cupy_backend.SPLIT_K_BLOCKS == split and cupy_backend.ONE_GROUP_GEMM == "gather"
    seen = []
    monkeypatch.setattr(gpu_bench, "kernel_choice",
                        lambda cu, name: (seen.append(name), gpu_bench.contextlib.nullcontext())[1])
    gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--steps", "1", "--no-micro",
                    "--e2e-kernels", "tensor+tiles,cublas+cublas+align8",
                    "--variants", "stock,compact"])
    (out,) = tmp_path.glob("dry-run-*.json")
    rows = json.loads(out.read_text())["results"]
    assert [(r["size"], r["variant"], r["kernels"]) for r in rows] == [
        (s, v, k) for s in ("default", "large") for v, k in (
            ("stock", None), ("compact", "tensor+tiles"), ("compact", "cublas+cublas+align8"))]
    assert {"sdrop_compact@tensor+tiles", "sdrop_compact@cublas+cublas+align8"} <= set(seen)
    for bad in ("tensor+tiles+fast", "tensor+tiles+align0", "tensor+tiles+alignx"):
        with pytest.raises(SystemExit) as stop:
            gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--no-micro",
                            "--e2e-kernels", bad])
        assert stop.value.code == 2
    assert json.loads(out.read_text())["micro"] == []


def test_op_count_sees_every_op_whatever_the_thread_count(monkeypatch):
    """With several CPU threads the torch backend runs a grouped GEMM's groups side by side on
    worker threads, whose ops the torch profiler does not record: op_count counts with them off,
    so the count (a GPU launch proxy; nothing runs side by side on a GPU) is the same with one or
    two threads."""
    import torch

    import op_count
    from onmt_sdrop.ops import torch_backend
    monkeypatch.setattr(torch_backend, "SIDE_BY_SIDE_MACS", 0)   # side by side even at toy size
    variants = {"sdrop_compact": op_count.VARIANTS["sdrop_compact"]}
    threads = torch.get_num_threads()
    counts = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            counts.append(op_count.step_counts(variants, hidden=16, layers=2, batch=4, vocab=40,
                                               dropout=0.3, mean_len=6,
                                               log=lambda *_: None)["sdrop_compact"])
    finally:
        torch.set_num_threads(threads)
    assert counts[0] == counts[1]
    assert torch_backend.SIDE_BY_SIDE_MACS == 0   # restored after counting


def _gpu_check_commands():
    """bench/gpu_check.sh's gpu_bench.py command lines, with their default settings filled in."""
    import re
    import shlex

    script = (BENCH / "gpu_check.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in script.splitlines():
        if "bench/gpu_bench.py" not in line or line.lstrip().startswith("#"):
            continue
        line = line.split("bench/gpu_bench.py", 1)[1].split("2>&1")[0]
        line = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line)
        commands.append(shlex.split(line))
    return commands


def test_gpu_check_commands_run_as_a_dry_run(tmp_path):
    """The device call runs once: each of gpu_check.sh's benchmark commands, exactly as written
    there, parses and runs through every kernel pair and variant it names (as a dry run)."""
    e2e, micro = _gpu_check_commands()
    assert e2e[e2e.index("--out") + 1] == "$OUT/e2e" and "--no-micro" in e2e
    pairs = e2e[e2e.index("--e2e-kernels") + 1].split(",")
    assert "cublas+cublas+align8" in pairs
    for argv, sub in ((e2e, "e2e"), (micro, "micro")):
        argv = [str(tmp_path / sub) if a.startswith("$OUT") else a for a in argv]
        gpu_bench.main(argv + ["--dry-run", "--steps", "1"])
    (out,) = (tmp_path / "e2e").glob("dry-run-*.json")
    rows = json.loads(out.read_text())["results"]
    assert {(r["variant"], r["kernels"]) for r in rows} == {("stock", None), ("dense", None)} | {
        ("compact", p) for p in pairs}   # the +graphs variants, run eagerly on the CPU
    (out,) = (tmp_path / "micro").glob("dry-run-*.json")
    micro_rows = json.loads(out.read_text())["micro"]
    assert {r["gemm"] for r in micro_rows if r["part"] != "prep"} == {
        f"{side}_{part}" for side in ("consumer", "producer") for part in ("fwd", "dx", "dw")}
    assert {r["align"] for r in micro_rows if "align" in r} == {8}


@pytest.mark.parametrize("argv", [["--variants", "stock,compact+graph"],
                                  ["--variants", "compact+graphs", "--no-graphs"]])
def test_gpu_bench_refuses_variants_it_would_not_run(tmp_path, argv):
    with pytest.raises(SystemExit) as stop:
        gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--no-micro"] + argv)
    assert stop.value.code == 2
