"""End to end through the stock OpenNMT-py entry points, and the one-line errors users see."""
from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu
import torch

from conftest import SAMPLE, SDROP_PAIR, bin_path, run

CONFIG = """\
save_data: {d}/run
src_vocab: {d}/vocab.src
tgt_vocab: {d}/vocab.tgt
overwrite: true
data:
  corpus_1:
    path_src: {s}/train.de
    path_tgt: {s}/train.en
  valid:
    path_src: {s}/valid.de
    path_tgt: {s}/valid.en
src_vocab_size: 3000
tgt_vocab_size: 3000
save_model: {d}/model
layers: 2
hidden_size: 32
word_vec_size: 32
batch_size: 16
batch_type: sents
bucket_size: 512
num_workers: 0
train_steps: 30
valid_steps: 30
save_checkpoint_steps: 15
report_every: 10
dropout: 0.3
seed: 1
"""


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    (d / "c.yaml").write_text(CONFIG.format(d=d, s=SAMPLE))
    ok(run([bin_path("onmt_build_vocab"), "-config", str(d / "c.yaml"), "-n_sample", "-1"]))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdrop", "stock"])
def test_train_resume_average_translate_score(workdir, kind):
    d = workdir / kind
    d.mkdir()
    cfg = str(workdir / "c.yaml")
    extra = list(SDROP_PAIR) if kind == "sdrop" else ["-encoder_type", "brnn", "-decoder_type", "rnn"]
    log = ok(run([bin_path("onmt_train"), "-config", cfg, "-save_model", str(d / "model"), *extra]))
    text = log.stdout + log.stderr
    assert "Step 30/" in text and "tok/s" in text
    if kind == "sdrop":
        assert "SdropBiRNNEncoder" in text and "SdropInputFeedDecoder" in text
    ckpt = torch.load(d / "model_step_30.pt", weights_only=False)
    assert ckpt["opt"].encoder_type == extra[1]
    # resume (torch.load of a full checkpoint under torch >= 2.6)
    res = ok(run([bin_path("onmt_train"), "-config", cfg, "-save_model", str(d / "resumed"),
                  *extra, "-train_from", str(d / "model_step_15.pt"), "-train_steps", "20",
                  "-save_checkpoint_steps", "20"]))
    assert "Step 20/" in res.stdout + res.stderr and "Step 10/" not in res.stdout + res.stderr
    assert (d / "resumed_step_20.pt").exists()
    ok(run([bin_path("onmt_average_models"), "-models", str(d / "model_step_15.pt"),
            str(d / "model_step_30.pt"), "-output", str(d / "avg.pt")]))
    src = d / "src.txt"
    src.write_text("".join((SAMPLE / "test.de").read_text().splitlines(True)[:12]))
    for model in ("model_step_30.pt", "avg.pt"):
        out = d / f"{model}.hyp"
        ok(run([bin_path("onmt_translate"), "-model", str(d / model), "-src", str(src),
                "-output", str(out), "-beam_size", "3", "-max_length", "20"]))
        hyps = out.read_text().splitlines()
        assert len(hyps) == 12
    refs = (SAMPLE / "test.en").read_text().splitlines()[:12]
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    assert 0.0 <= bleu.score <= 100.0


def test_package_cli_runs_the_same_entry_points(workdir):
    proc = ok(run([bin_path("onmt-sdrop"), "train", "-h"]))
    assert "-sdrop_pattern" in proc.stdout and "-sdrop_backend" in proc.stdout
    proc = run([bin_path("onmt-sdrop"), "nonsense"])
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def one_line_error(proc, *needles):
    err = proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert lines, err[-2000:]
    for n in needles:
        assert n in lines[-1], lines[-1]


@pytest.mark.parametrize("args,needles", [
    (["-dropout", "1.0"], ["-dropout must be in [0, 1)", "1.0"]),
    (["-dropout", "-0.2"], ["-dropout must be in [0, 1)"]),
    (["-sdrop_pattern", "stripes"], ["invalid choice", "stripes"]),
    (["-sdrop_count", "poisson"], ["invalid choice"]),
    (["-sdrop_backend", "cupy"], ["-sdrop_backend cupy needs a GPU and CuPy"]),
    (["-rnn_type", "GRU"], ["LSTM only", "GRU"]),
])
def test_bad_options_are_one_line_errors(workdir, args, needles):
    if args[:2] == ["-sdrop_backend", "cupy"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal is for machines without one")
    proc = run([bin_path("onmt_train"), "-config", str(workdir / "c.yaml"), *SDROP_PAIR, *args])
    one_line_error(proc, *needles)


def corpus_config(tmp_path: Path, src: str, tgt: str) -> str:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"save_data: {tmp_path}/x\nsrc_vocab: {tmp_path}/v\ntgt_vocab: {tmp_path}/v\n"
                   f"data:\n  c:\n    path_src: {src}\n    path_tgt: {tgt}\n")
    return str(cfg)


@pytest.mark.parametrize("tool", ["onmt_build_vocab", "onmt_train"])
def test_missing_and_unpaired_corpus(tmp_path, tool):
    a = tmp_path / "a.txt"
    a.write_text("1\n2\n3\n")
    b = tmp_path / "b.txt"
    b.write_text("1\n2\n")
    proc = run([bin_path(tool), "-config", corpus_config(tmp_path, a, tmp_path / "nope.txt")])
    one_line_error(proc, "file not found", "nope.txt")
    proc = run([bin_path(tool), "-config", corpus_config(tmp_path, a, b)])
    one_line_error(proc, "3 lines", "2", "pair up")


def test_missing_optional_transform_package_is_named(tmp_path):
    """'clean' needs fasttext, which a lean install lacks: a clear error, not an import crash."""
    a = tmp_path / "a.txt"
    a.write_text("hallo welt\n")
    cfg = corpus_config(tmp_path, a, a)
    proc = run([bin_path("onmt_build_vocab"), "-config", cfg, "-transforms", "clean",
                "-n_sample", "-1"])
    try:
        import fasttext  # noqa: F401
    except ImportError:
        one_line_error(proc, "'clean' transform needs the package", "pip install")
    else:  # pragma: no cover - only where fasttext is installed
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_dataloader_workers_train_without_the_start_up_hook(workdir, tmp_path):
    """`onmt-sdrop train -num_workers 1` in an interpreter that never ran the start-up hook (-S:
    no .pth file is read; the packages come from PYTHONPATH): the spawned worker re-imports
    onmt_sdrop.cli, which installs the guards, so `import onmt` does not die on the missing
    `spacy` and training finishes. Without the guard in the worker this run failed or hung."""
    import sysconfig
    import sys

    site = sysconfig.get_paths()["purelib"]
    root = Path(__file__).resolve().parents[1]
    proc = run([sys.executable, "-S", "-c", "import onmt"],
               env={"PYTHONPATH": f"{site}:{root}"}, timeout=120)
    assert proc.returncode != 0 and "spacy" in proc.stderr   # what a bare worker meets
    cmd = [sys.executable, "-S", "-m", "onmt_sdrop.cli", "train", "-config",
           str(workdir / "c.yaml"), "-save_model", str(tmp_path / "m"), "-num_workers", "1",
           "-train_steps", "4", "-valid_steps", "4", "-save_checkpoint_steps", "4",
           *SDROP_PAIR]
    ok(run(cmd, env={"PYTHONPATH": f"{site}:{root}"}, timeout=300))
    assert (tmp_path / "m_step_4.pt").exists()
