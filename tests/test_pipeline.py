"""The recipe pipeline on the bundled sample with the tiny profile: every stage, a subset of the
models, resumability, truncated and unlogged checkpoints, a kill -9 of the pipeline, the time
budget, and one-line errors for every bad command line or corpus.

One module-scoped run trains both models (sdrop first, alone, then the baseline next to it); the
other tests copy its prepared work folder, so they train only what they test."""
from __future__ import annotations

import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, SAMPLE, run

RUN = ["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(SAMPLE), "tiny"]
BANNERS = "=== "


def banners(stdout: str) -> str:
    return "\n".join(ln for ln in stdout.splitlines() if ln.startswith(BANNERS))


def env_for(base: Path) -> dict:
    return {"WORK": str(base / "work"), "RESULTS": str(base / "results"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    env = env_for(base)
    first = run(RUN + ["--models", "sdrop", "--valid-bleu"], env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_report = (base / "results" / "sample-deen-tiny" / "report.md").read_text()
    both = run(RUN + ["--valid-bleu"], env=env)
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]
    return SimpleNamespace(base=base, env=env, first=first, first_report=first_report, both=both,
                           work=base / "work" / "sample-deen-tiny",
                           out=base / "results" / "sample-deen-tiny")


def copy_work(tiny, dst: Path, models=()) -> dict:
    """A copy of the prepared work folder (data, spm, vocab) with the given models' runs."""
    work = dst / "work" / "sample-deen-tiny"
    shutil.copytree(tiny.work, work, ignore=lambda d, names: [
        n for n in names if Path(d) == tiny.work and n in ("baseline", "sdrop")
        and n not in models])
    return env_for(dst)


@pytest.mark.slow
def test_a_subset_of_the_models_trains_and_reports_what_it_has(tiny):
    assert "| sdrop |" in tiny.first_report and "| baseline |" not in tiny.first_report
    assert "No baseline in this run" in tiny.first_report
    # the second run trains only the baseline: sdrop is done
    assert "train baseline" in banners(tiny.both.stdout)
    assert "train sdrop" not in banners(tiny.both.stdout)
    summary = json.loads((tiny.out / "summary.json").read_text())
    assert set(summary["bleu"]) == {"baseline", "sdrop"}
    assert all(isinstance(v, float) for v in summary["bleu"].values())
    assert all(v > 0 for v in summary["tok_s"].values())
    assert "=== sample-deen/tiny: train sdrop" in tiny.first.stdout


@pytest.mark.slow
def test_best_checkpoint_is_translated_and_the_report_says_which(tiny):
    from onmt_sdrop.report import TrainLog

    summary = json.loads((tiny.out / "summary.json").read_text())
    report = (tiny.out / "report.md").read_text()
    assert summary["headline"] == "bleu_tok"           # tokenized IWSLT-style references
    assert report.index("BLEU (tok.)") < report.index("BLEU 13a")
    assert "tok:none" in report and "tok:13a" in report
    for name in ("baseline", "sdrop"):
        log = TrainLog.parse(p.read_text() for p in sorted((tiny.work / name).glob("train.*.log")))
        best = min(log.valid, key=lambda v: v[2])[0]
        assert summary["translated_step"][name] == best
        assert (tiny.work / name / f"test.step{best}.hyp").exists()
        assert f"step {best} ({name})" in report


@pytest.mark.slow
def test_plots_evidence_and_valid_bleu(tiny):
    import sacrebleu

    for png in ("curves.png", "bleu_time.png"):
        assert (tiny.out / png).stat().st_size > 1000
    summary = json.loads((tiny.out / "summary.json").read_text())
    assert set(summary["valid_bleu_greedy"]["sdrop"]) == {"5", "10"}
    refs = (SAMPLE / "test.en").read_text(encoding="utf-8").splitlines()[:8]
    for name in ("baseline", "sdrop"):
        ev = tiny.out / "evidence" / name
        scores = json.loads((ev / "scores.json").read_text())
        hyps = lzma.open(ev / "test.hyp.xz", "rt", encoding="utf-8").read().splitlines()
        assert scores["refs"]["lines"] == len(hyps) == 8
        tok = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(hyps, [refs]).score
        assert round(tok, 2) == scores["bleu_tok"] == summary["bleu_tok"][name]
        assert "Saving checkpoint" in lzma.open(ev / "train.log.xz", "rt").read()
        assert (ev / "translate.log.xz").exists()


@pytest.mark.slow
def test_a_rerun_finds_every_stage_done(tiny):
    again = run(RUN + ["--valid-bleu"], env=tiny.env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train" not in banners(again.stdout) and "translate" not in banners(again.stdout)


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_and_resume_keeps_few(tiny, tmp_path):
    """A kill during saving leaves a truncated checkpoint: the rerun says so in one line, resumes
    from the previous one, and after the resume no more than KEEP checkpoints are kept."""
    from onmt_sdrop.recipe.stages import KEEP

    env = copy_work(tiny, tmp_path, models=("sdrop",))
    run_dir = tmp_path / "work" / "sample-deen-tiny" / "sdrop"
    ckpt = run_dir / "model_step_10.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    proc = run(RUN + ["--models", "sdrop", "--steps", "25", "--no-valid-bleu"], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert ("sdrop: model_step_10.pt is truncated (killed while saving?), removed; falling back "
            "to model_step_5.pt") in proc.stdout
    assert "resuming from model_step_5.pt" in proc.stdout
    kept = sorted(p.name for p in run_dir.glob("model_step_*.pt"))
    assert len(kept) <= KEEP and "model_step_25.pt" in kept


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_kill_9_of_the_pipeline_kills_its_child_and_the_rerun_checks_the_logs(tiny, tmp_path):
    env = copy_work(tiny, tmp_path)
    run_dir = tmp_path / "work" / "sample-deen-tiny" / "baseline"
    cmd = [sys.executable, "-m", "onmt_sdrop.pipeline", "sample-deen", "--profile", "tiny",
           "--raw", str(SAMPLE), "--work", str(run_dir.parent), "--out",
           str(tmp_path / "results"), "--models", "baseline", "--steps", "100000"]
    pipe = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **env))
    try:
        log = run_dir / "train.0.log"
        deadline = time.time() + 120
        while time.time() < deadline:       # a checkpoint saved and the next step reported
            text = log.read_text() if log.exists() else ""
            if "Saving checkpoint" in text and " Step " in text.rsplit("Saving checkpoint", 1)[1]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("onmt_train did not save a checkpoint in 120 s")
        kids = _children(pipe.pid)
        assert kids, "no child process"
    finally:
        pipe.send_signal(signal.SIGKILL)
        pipe.wait()
    gone = time.time() + 10
    while any(_alive(k) for k in kids) and time.time() < gone:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "onmt_train outlived the pipeline"
    # a checkpoint nobody logged (as a child that trained on would have left): not trusted
    from onmt_sdrop.recipe.process import checkpoints, intact, step_of
    from onmt_sdrop.report import TrainLog

    logged = TrainLog.parse([log.read_text()])
    steps = 5 * ((logged.last_step // 5) + 2)
    good = [c for c in checkpoints(run_dir) if intact(c)]
    shutil.copyfile(good[-1], run_dir / f"model_step_{steps}.pt")
    again = run(cmd[:-1] + [str(steps), "--no-valid-bleu"], env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"baseline: model_step_{steps}.pt not in the training logs (they end at step " \
           f"{logged.last_step}): removed, training on from there" in again.stdout
    assert "resuming from model_step_" in again.stdout
    final = TrainLog.parse(p.read_text() for p in run_dir.glob("train.*.log"))
    assert final.valid[-1][0] == steps and step_of(checkpoints(run_dir)[-1]) == steps


@pytest.mark.parametrize("args, message", [
    (["--models", "baseline,foo"], "--models: unknown model 'foo'"),
    (["--steps", "-5"], "argument --steps: must be > 0, got -5"),
    (["--steps", "0"], "argument --steps: must be > 0, got 0"),
    (["--time-budget", "-1"], "argument --time-budget: must be > 0, got -1"),
    (["--time-budget", "0"], "argument --time-budget: must be > 0, got 0"),
])
def test_bad_options_are_one_line(tmp_path, args, message):
    proc = run(RUN + args, env=env_for(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def test_local_subset_refuses_pairs_it_cannot_serve(tmp_path):
    proc = run(["bash", str(ROOT / "recipes" / "multi30k-ende" / "run.sh"), str(SAMPLE),
                "local-subset"], env=env_for(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "profile 'local-subset' serves only iwslt14-deen" in proc.stderr


def test_help_prints_usage(tmp_path):
    for script in [ROOT / "recipes" / "run.sh", *sorted((ROOT / "recipes").glob("*/run.sh"))]:
        proc = run(["bash", str(script), "--help"], env=env_for(tmp_path))
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), script
        assert proc.stderr == "" and not (tmp_path / "work").exists()
    proc = run(["bash", str(ROOT / "recipes" / "run.sh")], env=env_for(tmp_path))
    assert proc.returncode == 2 and "PAIR and RAW_DIR are required" in proc.stderr


def test_tiny_profile_serves_every_pair(tmp_path):
    """``tiny`` cuts line ranges of each pair's own files (Multi30k's test is test2016)."""
    from onmt_sdrop.recipe.catalogue import PAIRS, PROFILES, splits
    from onmt_sdrop.recipe.stages import Pipeline

    for pair in PAIRS.values():
        assert splits(pair, PROFILES["tiny"])["test"] == (pair.splits["test"][0], 0, 8)
    raw = ROOT.parent / "shared" / "data" / "multi30k-ende"
    if not raw.is_dir():
        pytest.skip("../shared/data/multi30k-ende is not on this machine")
    pipe = Pipeline("multi30k-ende", "tiny", raw, tmp_path / "w", tmp_path / "r")
    pipe.prepare()
    assert len((tmp_path / "w" / "data" / "test.tgt").read_text().splitlines()) == 8


def test_checkpoint_helpers(tmp_path):
    import torch

    from onmt_sdrop.recipe.process import drop_truncated, intact, prune

    for step in (5, 10, 15, 20):
        torch.save({"step": step}, tmp_path / f"model_step_{step}.pt")
    full = (tmp_path / "model_step_20.pt").read_bytes()
    (tmp_path / "model_step_20.pt").write_bytes(full[:-30])
    assert not intact(tmp_path / "model_step_20.pt") and intact(tmp_path / "model_step_15.pt")
    said = []
    good = drop_truncated(tmp_path, said.append)
    assert [p.name for p in good] == ["model_step_5.pt", "model_step_10.pt", "model_step_15.pt"]
    assert said == [f"{tmp_path.name}: model_step_20.pt is truncated (killed while saving?), "
                    "removed; falling back to model_step_15.pt"]
    kept = prune(tmp_path, 2, best_step=5)
    assert [p.name for p in kept] == ["model_step_5.pt", "model_step_15.pt"]


def test_missing_and_unpaired_raw_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.de").write_text("a\nb\n")
    (raw / "train.en").write_text("a\n")
    cmd = ["bash", str(ROOT / "recipes" / "run.sh"), "sample-deen", str(raw), "tiny"]
    env = env_for(tmp_path)
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


@pytest.mark.slow
def test_gpu_check_dry_run(tiny, tmp_path):
    """recipes/gpu_check.sh --dry-run: the GPU script's every stage on the CPU with the tiny model
    (two seeds per model at the same time, the time-budget run, the report over the seeds).
    The time budget: training stops at the first finished checkpoint past it, that checkpoint is
    translated and scored, and the report says where each model stopped."""
    work = tmp_path / "gpu-work"
    shutil.copytree(tiny.work, work / "main", ignore=lambda d, names: [
        n for n in names if Path(d) == tiny.work and n in ("baseline", "sdrop")])
    out = tmp_path / "out"
    proc = run(["bash", str(ROOT / "recipes" / "gpu_check.sh"), "--dry-run"],
               env={"OUT": str(out), "GPU_WORK": str(work), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == ["seed1", "seed2"] and summary["headline"] == "bleu_tok"
    for model in ("baseline", "sdrop"):
        assert len(summary["per_model"][model]["bleu"]["values"]) == 2
        assert all(v > 0 for v in summary["per_model"][model]["tok_s"]["values"])
        assert summary["time_budget"]["translated_step"][model] == 5
        for seed in ("seed1", "seed2"):
            assert (out / seed / "evidence" / f"{model}-{seed}" / "test.hyp.xz").exists()
            assert (out / seed / "bleu_time.png").exists()
    report = (out / "report.md").read_text()
    assert "2 seeds" in report and "Same training time" in report
    for model in ("baseline", "sdrop"):
        assert f"{model}-seed1 stopped by the time budget; its last checkpoint is step 5" \
            in (out / "budget.log").read_text()
        run_dir = work / "budget" / f"{model}-seed1"
        assert json.loads((run_dir / "budget.json").read_text())["step"] == 5
        assert not (run_dir / "model_step_10.pt").exists()
        assert (run_dir / "test.step5.hyp").exists()
    assert "time budget of 0.0001 min per model, which ended at step 5 (baseline)" in \
        (out / "budget" / "report.md").read_text()
    assert (out / "bleu_time.png").stat().st_size > 1000 and (out / "device.txt").exists()


def test_plot_axis_is_linear_and_zoomed_to_where_the_curves_meet(tmp_path):
    from onmt_sdrop.report import TrainLog, plot_curves, zoomed_ylim

    base = [150.2, 77.9, 58.2, 47.8, 42.1, 37.8]   # IWSLT local-subset, valid ppl per 250 steps
    sdrop = [168.0, 80.8, 59.9, 48.9, 42.9, 38.8]
    lo, hi = zoomed_ylim([base, sdrop])
    assert 35 < lo < 37.8 and 77.6 < hi < 80
    logs = {n: TrainLog(valid=[(250 * (i + 1), 60.0 * i, p) for i, p in enumerate(c)])
            for n, c in (("baseline", base), ("sdrop", sdrop))}
    plot_curves(logs, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 1000
