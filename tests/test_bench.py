"""The benchmarks run end to end at toy sizes, so a broken script is found here, not on the GPU's
time: gpu_bench --dry-run is the GPU benchmark's own code on the CPU with the torch backend."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import cpu_bench  # noqa: E402
import gpu_bench  # noqa: E402


def test_gpu_bench_dry_run_writes_the_issue_layout(tmp_path):
    gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--steps", "2"])
    (out,) = tmp_path.glob("dry-run-*.json")
    result = json.loads(out.read_text())
    assert {"device", "torch", "config", "tok_s", "tok_s_fp16", "large", "micro"} <= set(result)
    assert "not a measurement" in result["device"]
    for tok_s in (result["tok_s"], result["large"]["tok_s"]):
        assert set(tok_s) == {"stock", "sdrop_dense", "sdrop_compact"}
        assert all(v > 0 for v in tok_s.values())
    # every GEMM at every p, forward and forward+backward
    assert len(result["micro"]) == 3 * 3 * 2
    for row in result["micro"]:
        assert row["dense_ms"] > 0 and row["compact_ms"] > 0
        assert abs(row["ideal"] - 1 / (1 - row["p"])) < 1e-3


def test_cpu_bench_writes_ratios(tmp_path):
    out = tmp_path / "cpu.json"
    cpu_bench.main(["--steps", "1", "--warmup", "1", "--round", "1", "--hidden", "16",
                    "--batch", "3", "--vocab", "40", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["tok_s"]) == set(cpu_bench.VARIANTS)
    assert result["ratios"]["compact_vs_dense"] == round(
        result["tok_s"]["sdrop_compact"] / result["tok_s"]["sdrop_dense"], 3)
