"""The recipe pipeline on the bundled sample with the tiny profile: every stage, resumability,
clear errors for bad corpora."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, run


@pytest.mark.slow
def test_whole_pipeline_on_the_sample(tmp_path):
    env = {"WORK": str(tmp_path / "work"), "RESULTS": str(tmp_path / "results")}
    cmd = ["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(SAMPLE), "tiny"]
    proc = run(cmd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results" / "sample-deen-tiny"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["bleu"]) == {"baseline", "sdrop"}
    assert all(isinstance(v, float) for v in summary["bleu"].values())
    assert all(v > 0 for v in summary["tok_s"].values())
    assert (out / "curves.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| sdrop |" in report and "BLEU" in report and "chrF" in report
    # stage banners give progress
    assert "=== sample-deen/tiny: train sdrop" in proc.stdout
    # a rerun finds every stage done and only rewrites the report
    again = run(cmd, env=env)
    assert again.returncode == 0
    assert "train" not in "".join(ln for ln in again.stdout.splitlines() if ln.startswith("==="))
    # a crash mid-training: the next run resumes from the last checkpoint; asking for more steps
    # trains on from there and translates with the new final checkpoint, never the old outputs
    work = tmp_path / "work" / "sample-deen-tiny" / "sdrop"
    (work / "model_step_10.pt").unlink()
    resumed = run(cmd + ["--steps", "15"], env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert "resuming from model_step_5.pt" in resumed.stdout
    assert "resuming from model_step_10.pt" in resumed.stdout   # the baseline
    for name in ("baseline", "sdrop"):
        assert (work.parent / name / "test.step15.hyp").exists()
        assert (work.parent / name / "test.step10.hyp").exists()

@pytest.mark.slow
def test_time_budget_stops_at_a_whole_checkpoint(tmp_path):
    """--time-budget: training stops at the first finished checkpoint past the budget, that
    checkpoint is translated and scored, and a rerun finds the stage done."""
    env = {"WORK": str(tmp_path / "work"), "RESULTS": str(tmp_path / "results")}
    cmd = ["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(SAMPLE), "tiny",
           "--time-budget", "0.0001"]
    proc = run(cmd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "work" / "sample-deen-tiny"
    for name in ("baseline", "sdrop"):
        assert f"{name} stopped by the time budget; its last checkpoint is step 5" in proc.stdout
        assert json.loads((work / name / "budget.json").read_text())["step"] == 5
        assert not (work / name / "model_step_10.pt").exists()
        assert (work / name / "test.step5.hyp").exists()
    report = (tmp_path / "results" / "sample-deen-tiny" / "report.md").read_text()
    assert "time budget of 0.0001 min per model, which ended at step 5 (baseline)" in report
    again = run(cmd, env=env)
    assert again.returncode == 0 and "stopped by the time budget" not in again.stdout
    bad = run(cmd[:-1] + ["0"], env=env)
    assert bad.returncode == 2 and "--time-budget must be > 0 minutes" in bad.stderr


def test_missing_and_unpaired_raw_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.de").write_text("a\nb\n")
    (raw / "train.en").write_text("a\n")
    cmd = ["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(raw), "tiny"]
    env = {"WORK": str(tmp_path / "w"), "RESULTS": str(tmp_path / "r")}
    proc = run(cmd, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.de has 2 lines but train.en has 1" in proc.stderr
    proc = run(["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(tmp_path / "nope")],
               env=env)
    assert proc.returncode == 2 and "raw-data folder not found" in proc.stderr
    (raw / "train.en").write_text("a\nb\n")
    proc = run(cmd, env=env)
    assert proc.returncode == 2 and "valid.de (or .xz) not found" in proc.stderr


def test_every_recipe_script_names_an_existing_pair():
    from onmt_sdrop.pipeline import PAIRS

    for script in (ROOT / "recipes").glob("*/run.sh"):
        assert script.parent.name in PAIRS
        assert Path(script).stat().st_mode & 0o111
