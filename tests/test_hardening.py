"""Issue 12: no code runs from a checkpoint, one line (exit 2) for every bad input, checkpoints
that move between GPU and CPU, no silent degenerate dropout.

One tiny sdrop model is trained once for the module (two checkpoints + their average). The
security and GPU->CPU cases run the real entry points in subprocesses; the many option and input
errors call the same wrapped ``onmt.bin.*.main`` in-process (same code path, no interpreter
start-up), asserting exit status 2, the one line, and no traceback.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import sys

import pytest
import torch

from conftest import SAMPLE, SDROP_PAIR, bin_path, run
from onmt_sdrop import patches
from onmt_sdrop.errors import SdropError

CONFIG = """\
src_vocab: {d}/vocab.src
tgt_vocab: {d}/vocab.tgt
data:
  corpus_1:
    path_src: {d}/train.de
    path_tgt: {d}/train.en
save_model: {d}/model
hidden_size: 16
word_vec_size: 16
layers: 1
batch_size: 8
batch_type: sents
bucket_size: 64
num_workers: 0
train_steps: 2
valid_steps: 1000
save_checkpoint_steps: 1
report_every: 1
dropout: 0.3
seed: 1
"""


def write_vocab(path, lines):
    counts = collections.Counter(w for ln in lines for w in ln.split())
    path.write_text("".join(f"{w}\t{n}\n" for w, n in counts.most_common()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1x16 sdrop model: model_step_1.pt, model_step_2.pt, avg.pt; plus the config and a src."""
    d = tmp_path_factory.mktemp("hard")
    for side in ("de", "en"):
        lines = (SAMPLE / f"train.{side}").read_text().splitlines(True)[:64]
        (d / f"train.{side}").write_text("".join(lines))
        write_vocab(d / f"vocab.{'src' if side == 'de' else 'tgt'}", lines)
    (d / "c.yaml").write_text(CONFIG.format(d=d))
    (d / "src.txt").write_text("".join((SAMPLE / "test.de").read_text().splitlines(True)[:3]))
    proc = run([bin_path("onmt_train"), "-config", str(d / "c.yaml"), *SDROP_PAIR])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run([bin_path("onmt_average_models"), "-models", str(d / "model_step_1.pt"),
                str(d / "model_step_2.pt"), "-output", str(d / "avg.pt")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def assert_one_line(code, err, *needles):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def proc_error(proc, *needles):
    return assert_one_line(proc.returncode, proc.stderr, *needles)


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``onmt.bin.<tool>.main`` in-process with ``args``; (exit code, stderr)."""
    import logging

    # entry points log through handlers bound to the sys.stderr of their time: start afresh
    monkeypatch.setattr(logging.getLogger("onmt"), "handlers", [])

    def call(tool, *args):
        main = importlib.import_module(f"onmt.bin.{tool}").main
        monkeypatch.setattr(sys, "argv", [f"onmt_{tool}", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main()
        return exc.value.code, capsys.readouterr().err

    return call


# ------------------------------------------------------------------ security: no code from a .pt

class Payload:
    """Unpickling this creates the marker file (``open(marker, "w")``): a visible side effect."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def evil(trained):
    ckpt = torch.load(trained / "model_step_2.pt", weights_only=False)
    marker = trained / "PAYLOAD_RAN"
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, trained / "evil.pt")
    return trained / "evil.pt", marker


@pytest.mark.parametrize("tool", ["translate", "train_from", "average_models"])
def test_malicious_checkpoint_is_refused_and_its_payload_does_not_run(trained, evil, tool):
    path, marker = evil
    d = trained
    cmd = {"translate": [bin_path("onmt_translate"), "-model", path, "-src", d / "src.txt",
                         "-output", d / "evil.hyp"],
           "train_from": [bin_path("onmt_train"), "-config", d / "c.yaml", *SDROP_PAIR,
                          "-train_from", path, "-save_model", d / "evil_resumed"],
           "average_models": [bin_path("onmt_average_models"), "-models", path,
                              d / "model_step_1.pt", "-output", d / "evil_avg.pt"]}[tool]
    proc = run([str(c) for c in cmd])
    proc_error(proc, "evil.pt", "needs the global", "open", patches.TRUST_ENV)
    assert not marker.exists(), "the checkpoint's payload ran"


class ShellPayload:
    """The classic: unpickling runs ``os.system("touch marker")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle2", "pickle4"])
def test_payload_refused_in_every_file_format(tmp_path, fmt):
    """torch.save's zip format, its legacy format, and a bare pickle.dump: all refused by
    OpenNMT-py's own loader, naming the global, and the command never runs. (torch's unpickler
    stops a protocol-4 pickle at its first FRAME opcode, before any global: refused as damaged.)"""
    import pickle

    from onmt.models.model_saver import load_checkpoint

    marker = tmp_path / "RAN"
    obj = {"opt": argparse.Namespace(a=1), "x": ShellPayload(marker)}
    path = tmp_path / f"{fmt}.pt"
    if fmt.startswith("pickle"):
        path.write_bytes(pickle.dumps(obj, protocol=int(fmt[-1])))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    why = "not a checkpoint" if fmt == "pickle4" else r"needs the global (posix|os|nt)\.system"
    with pytest.raises(SdropError, match=why):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_trusted_opt_in_loads_what_the_allowlist_refuses(trained, evil, monkeypatch):
    path, marker = evil
    with pytest.raises(SdropError, match="needs the global .*open"):
        patches.safe_load(path)
    assert not marker.exists()
    monkeypatch.setenv(patches.TRUST_ENV, "1")
    ckpt = patches.safe_load(path)  # the user said the file is trusted: a full pickle load
    assert "extra" in ckpt and marker.exists()
    marker.unlink()


def test_allowlist_is_exactly_what_real_checkpoints_hold(trained):
    """onmt_train's checkpoints and onmt_average_models' output need argparse.Namespace only."""
    assert patches.CHECKPOINT_GLOBALS == [argparse.Namespace]
    for name in ("model_step_1.pt", "model_step_2.pt", "avg.pt"):
        needs = torch.serialization.get_unsafe_globals_in_checkpoint(str(trained / name))
        assert needs == ["argparse.Namespace"], (name, needs)
        ckpt = patches.safe_load(trained / name)
        assert {"model", "generator", "vocab", "opt", "optim"} <= set(ckpt)


def test_other_callers_keep_torch_default(trained):
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(trained / "model_step_2.pt")


# ------------------------------------------------------------------ GPU -> CPU checkpoints

@pytest.fixture(scope="module")
def cupy_ckpt(trained):
    """The averaged checkpoint with its stored options edited to say -sdrop_backend cupy."""
    ckpt = torch.load(trained / "avg.pt", weights_only=False)
    ckpt["opt"].sdrop_backend = "cupy"
    torch.save(ckpt, trained / "cupy.pt")
    return trained / "cupy.pt"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal was for machines without a GPU")
def test_cupy_checkpoint_translates_on_cpu(trained, cupy_ckpt):
    """The installed command, given -sdrop_backend (stock translate would call it unknown)."""
    out = trained / "cupy_torch.hyp"
    proc = run([bin_path("onmt_translate"), "-model", str(cupy_ckpt), "-src",
                str(trained / "src.txt"), "-output", str(out), "-max_length", "5",
                "-sdrop_backend", "torch"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal was for machines without a GPU")
def test_cupy_checkpoint_translates_on_cpu_without_backend_option(trained, cupy_ckpt, monkeypatch):
    """The same in-process, with no -sdrop_backend: the checkpoint's cupy is ignored."""
    import onmt.bin.translate

    out = trained / "cupy_auto.hyp"
    monkeypatch.setattr(sys, "argv", ["onmt_translate", "-model", str(cupy_ckpt), "-src",
                                      str(trained / "src.txt"), "-output", str(out),
                                      "-max_length", "5"])
    onmt.bin.translate.main()
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal was for machines without a GPU")
def test_train_from_cupy_checkpoint_takes_the_command_line_backend(trained, cupy_ckpt):
    """-train_from: the backend given on the command line (else auto), never the checkpoint's;
    another -dropout is named in one info line (the checkpoint's rate is kept)."""
    proc = run([bin_path("onmt_train"), "-config", str(trained / "c.yaml"), *SDROP_PAIR,
                "-train_from", str(cupy_ckpt), "-sdrop_backend", "dense", "-dropout", "0.5",
                "-train_steps", "3", "-save_model", str(trained / "resumed")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = [ln for ln in proc.stderr.splitlines() if "-train_from: training on with" in ln]
    assert len(info) == 1 and "-dropout 0.3 (not 0.5)" in info[0], proc.stderr[-2000:]
    saved = torch.load(trained / "resumed_step_3.pt", weights_only=False)["opt"]
    assert saved.sdrop_backend == "dense" and saved.dropout == [0.3]


def test_train_from_without_backend_option_uses_auto(trained, cupy_ckpt):
    import onmt.train_single
    from onmt.opts import train_opts
    from onmt.utils.parse import ArgumentParser

    parser = ArgumentParser()
    train_opts(parser)
    opt = parser.parse_known_args(["-config", str(trained / "c.yaml"), *SDROP_PAIR])[0]
    ckpt = patches.safe_load(cupy_ckpt)
    model_opt = onmt.train_single._get_model_opts(opt, checkpoint=ckpt)
    assert model_opt.sdrop_backend == "auto"


# ------------------------------------------------------------------ option errors (in-process)

def train_args(trained, *extra):
    return ["-config", trained / "c.yaml", *SDROP_PAIR, *extra]


@pytest.mark.parametrize("extra,needles", [
    # no silent degenerate dropout: kept count H - round(p*H) of 0, or of H with p > 0
    (["-dropout", "0.97"], ["-dropout 0.97", "16-wide", "= 0 of 16", "every unit"]),
    (["-dropout", "0.3", "0.97", "-dropout_steps", "0", "100", "-attention_dropout", "0", "0"],
     ["-dropout 0.97", "= 0 of 16"]),
    (["-encoder_type", "sdrop_rnn", "-hidden_size", "1", "-dropout", "0.5"],
     ["-dropout 0.5", "1-wide", "(-dec_hid_size)", "= 1 of 1", "nothing would ever be dropped"]),
    (["-word_vec_size", "-1", "-src_word_vec_size", "3", "-dropout", "0.9"],
     ["3-wide", "(-src_word_vec_size)", "= 0 of 3"]),
    (["-layers", "-1", "-enc_layers", "2", "-dec_layers", "2", "-hidden_size", "-1",
      "-enc_hid_size", "4", "-dec_hid_size", "4", "-dropout", "0.9"], ["4-wide", "= 0 of 4"]),
    # -input_feed 0 with copy / coverage attention: refused before the model is built
    (["-input_feed", "0", "-copy_attn"], ["-input_feed 0 supports neither", "given -copy_attn"]),
    (["-input_feed", "0", "-coverage_attn"], ["given -coverage_attn"]),
    # layer counts, pairs, schedules
    (["-layers", "-1", "-enc_layers", "0"], ["-enc_layers must be at least 1, got 0"]),
    (["-layers", "-1", "-dec_layers", "0"], ["-dec_layers must be at least 1, got 0"]),
    (["-encoder_type", "transformer"], ["-decoder_type sdrop_rnn", "-encoder_type transformer"]),
    (["-encoder_type", "cnn"], ["-decoder_type sdrop_rnn", "-encoder_type cnn has none"]),
    (["-decoder_type", "cnn"], ["-encoder_type sdrop_brnn does not work with -decoder_type cnn"]),
    (["-dropout", "0.3", "0.1", "-dropout_steps", "0", "10"],
     ["-dropout has 2 value(s), -attention_dropout 1 and -dropout_steps 2"]),
    # stock OpenNMT-py's own assertions, one line instead of a traceback
    (["-update_vocab"], ["-update_vocab needs -train_from"]),
    (["-sdrop_window_align", "0"], ["-sdrop_window_align must be >= 1, got 0"]),
    # an alignment as wide as a site: one window position, every step the same units
    (["-sdrop_window_align", "16"], ["-sdrop_window_align 16", "16-wide", "one window position"]),
    (["-layers", "-1", "-hidden_size", "-1", "-enc_hid_size", "8", "-dec_hid_size", "16"],
     ["must be the same size"]),
])
def test_bad_model_options_are_one_line_errors(trained, cli, extra, needles):
    assert_one_line(*cli("train", *train_args(trained, *extra)), *needles)


@pytest.mark.parametrize("extra", [
    # the kept-count refusal is for the fixed count; bernoulli draws Binomial(H, 1-p)
    ("-dropout", "0.97", "-sdrop_count", "bernoulli"),
    # alignments below the narrowest site (16), or any with the fixed pattern
    ("-sdrop_window_align", "15"),
    ("-sdrop_window_align", "16", "-sdrop_pattern", "fixed"),
])
def test_options_near_the_refusals_are_fine(trained, extra):
    from onmt.opts import train_opts
    from onmt.utils.parse import ArgumentParser

    parser = ArgumentParser()
    train_opts(parser)
    opt = parser.parse_known_args([str(a) for a in train_args(trained, *extra)])[0]
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)  # no error


# ------------------------------------------------------------------ bad checkpoints and inputs

@pytest.fixture(scope="module")
def bad_ckpts(trained):
    d = trained / "bad"
    d.mkdir()
    (d / "empty.pt").write_bytes(b"")
    data = (trained / "model_step_1.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "text.pt").write_text("not a checkpoint\n")
    return d


CKPT_CASES = [("missing.pt", "checkpoint not found"), ("empty.pt", "checkpoint is empty"),
              ("truncated.pt", "damaged or truncated"), ("text.pt", "damaged or truncated")]


@pytest.mark.parametrize("name,needle", CKPT_CASES)
@pytest.mark.parametrize("tool", ["translate", "train_from", "average_models"])
def test_bad_checkpoint_is_one_line(trained, bad_ckpts, cli, tool, name, needle):
    path = bad_ckpts / name
    args = {"translate": ["-model", path, "-src", trained / "src.txt",
                          "-output", trained / "x.hyp"],
            "train_from": train_args(trained, "-train_from", path,
                                     "-save_model", trained / "never"),
            "average_models": ["-models", trained / "model_step_1.pt", path,
                               "-output", trained / "never.pt"]}[tool]
    code, err = cli("train" if tool == "train_from" else tool, *args)
    assert_one_line(code, err, needle, name)


def test_bad_checkpoint_subprocess_exit_status(trained, bad_ckpts):
    """The same through the installed command, for its real exit status."""
    proc = run([bin_path("onmt_average_models"), "-models", str(bad_ckpts / "truncated.pt"),
                "-output", str(trained / "never.pt")])
    proc_error(proc, "truncated.pt", "damaged or truncated")


@pytest.mark.parametrize("src,needle", [("missing.txt", "-src: file not found"),
                                        ("empty.txt", "-src: file is empty"),
                                        ("latin1.txt", "-src: "),
                                        ("tgt:missing.txt", "-tgt: file not found")])
def test_translate_bad_src(trained, cli, src, needle):
    (trained / "empty.txt").write_text("")
    (trained / "latin1.txt").write_bytes("gr\xfc\xdfe\n".encode("latin-1"))
    extra = ["-tgt", trained / src.split(":")[1]] if src.startswith("tgt:") else []
    code, err = cli("translate", "-model", trained / "avg.pt",
                    "-src", trained / (src if not extra else "src.txt"),
                    "-output", trained / "x.hyp", *extra)
    line = assert_one_line(code, err, needle, src.split(":")[-1])
    if src == "latin1.txt":
        assert "line 1 is not UTF-8 (byte 0xfc at column 3)" in line


def test_translate_output_folder_missing(trained, cli):
    code, err = cli("translate", "-model", trained / "avg.pt", "-src", trained / "src.txt",
                    "-output", trained / "no" / "such" / "x.hyp")
    assert_one_line(code, err, "-output folder does not exist")


def corpus_config(d, src, tgt, vocab=None):
    vocab = vocab or d / "v"
    cfg = d / "corpus.yaml"
    cfg.write_text(f"save_data: {d}/x\nsrc_vocab: {vocab}\ntgt_vocab: {vocab}\n"
                   f"data:\n  c:\n    path_src: {src}\n    path_tgt: {tgt}\n")
    return cfg


@pytest.mark.parametrize("tool", ["build_vocab", "train"])
def test_empty_and_non_utf8_corpus(tmp_path, cli, tool):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line(*cli(tool, "-config", corpus_config(tmp_path, empty, empty)),
                    "file is empty", "empty.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("eins\nzwei\ndr\xc3\xbc\xff ei\n".encode("latin-1"))
    good = tmp_path / "good.txt"
    good.write_text("one\ntwo\nthree\n")
    assert_one_line(*cli(tool, "-config", corpus_config(tmp_path, bad, good)),
                    "bad.txt line 3 is not UTF-8")


def test_empty_vocabulary_file(tmp_path, trained, cli):
    vocab = tmp_path / "empty.vocab"
    vocab.write_text("")
    src = trained / "train.de"
    code, err = cli("train", "-config", corpus_config(tmp_path, src, trained / "train.en", vocab),
                    *SDROP_PAIR)
    assert_one_line(code, err, "vocab file is empty", "empty.vocab")


def test_corpus_error_subprocess_exit_status(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run([bin_path("onmt_build_vocab"), "-config",
                str(corpus_config(tmp_path, empty, empty)), "-n_sample", "-1"])
    proc_error(proc, "file is empty")


@pytest.mark.parametrize("tool", ["translate", "average_models"])
def test_torch_file_that_is_not_a_checkpoint(trained, cli, tool):
    path = trained / "bad" / "tensor.pt"
    torch.save(torch.zeros(3), path)
    args = {"translate": ["-model", path, "-src", trained / "src.txt", "-output", trained / "x"],
            "average_models": ["-models", path, "-output", trained / "never.pt"]}[tool]
    assert_one_line(*cli(tool, *args), "tensor.pt is not an OpenNMT-py checkpoint",
                    "holds a Tensor")


@pytest.mark.skipif(torch.cuda.is_available(), reason="for machines without a GPU")
def test_gpu_options_without_a_gpu(trained, cli):
    assert_one_line(*cli("translate", "-model", trained / "avg.pt", "-src", trained / "src.txt",
                         "-output", trained / "x.hyp", "-gpu", "0"),
                    "-gpu 0 asks for GPU 0", "no GPU visible")
    assert_one_line(*cli("train", *train_args(trained, "-gpu_ranks", "0")),
                    "-gpu_ranks 0 asks for 1 GPU(s)", "no GPU visible")


def test_resume_names_every_model_option_it_does_not_take(trained, cupy_ckpt, caplog):
    import logging

    import onmt.train_single
    from onmt.opts import train_opts
    from onmt.utils.parse import ArgumentParser

    parser = ArgumentParser()
    train_opts(parser)
    opt = parser.parse_known_args([str(a) for a in train_args(
        trained, "-dropout", "0.5", "-sdrop_pattern", "fixed")])[0]
    with caplog.at_level(logging.INFO, logger="onmt"):
        onmt.train_single._get_model_opts(opt, checkpoint=patches.safe_load(cupy_ckpt))
    lines = [r.getMessage() for r in caplog.records if "-train_from:" in r.getMessage()]
    assert len(lines) == 1
    assert "-dropout 0.3 (not 0.5), -sdrop_pattern step (not fixed)" in lines[0]
    assert "--override_opts" in lines[0]


def test_misspelt_train_option_is_refused_with_a_hint(trained, cli):
    """onmt_train parses with parse_known_args: stock drops a typo silently."""
    assert_one_line(*cli("train", *train_args(trained, "-override_opts", "-sdrop_pattren", "step")),
                    "unrecognized arguments: -override_opts (did you mean --override_opts?)",
                    "-sdrop_pattren (did you mean -sdrop_pattern?)")


def test_existing_vocabulary_without_overwrite(trained, cli, tmp_path):
    cfg = corpus_config(tmp_path, trained / "train.de", trained / "train.en",
                        vocab=trained / "vocab.src")
    assert_one_line(*cli("build_vocab", "-config", cfg, "-n_sample", "-1"),
                    "vocab.src exists; add -overwrite to replace it")


@pytest.mark.parametrize("extra,needle", [
    (["-transforms", "sentencepiece"], "-transforms sentencepiece needs -src_subword_model"),
    (["-transforms", "bpe", "-src_subword_model", "nope.model"],
     "-src_subword_model file not found: nope.model"),
])
def test_subword_transform_without_its_model(trained, cli, extra, needle):
    assert_one_line(*cli("train", *train_args(trained, *extra)), needle)
    assert_one_line(*cli("translate", "-model", trained / "avg.pt", "-src", trained / "src.txt",
                         "-output", trained / "x.hyp", *extra), needle)


def test_translate_beam_size_zero(trained, cli):
    assert_one_line(*cli("translate", "-model", trained / "avg.pt", "-src", trained / "src.txt",
                         "-output", trained / "x.hyp", "-beam_size", "0"),
                    "-beam_size must be at least 1, got 0")


def test_resume_past_a_dropout_schedule_boundary_starts_at_the_scheduled_rate():
    """Stock switches only at step dropout_steps[i] + 1: a resume past it kept the first rate."""
    from onmt_sdrop.plugin import _wrap_train_build_model, scheduled_index

    assert [scheduled_index([0, 2, 5], s) for s in (1, 2, 3, 5, 6, 100)] == [0, 0, 1, 1, 2, 2]
    calls = []

    class Model:
        def update_dropout(self, p, attn):
            calls.append((p, attn))

    build = _wrap_train_build_model(lambda *a, **k: Model())
    opt = argparse.Namespace(dropout=[0.3, 0.1], attention_dropout=[0.2, 0.0],
                             dropout_steps=[0, 1000], reset_optim="none")
    build(None, opt, None, {"optim": {"training_step": 1500}}, -1)
    build(None, opt, None, {"optim": {"training_step": 1000}}, -1)   # before the switch
    build(None, opt, None, None, -1)                                  # not a resume
    assert calls == [(0.1, 0.0)]


def test_info_tells_how_checkpoints_load(capsys, monkeypatch):
    from onmt_sdrop import cli

    monkeypatch.delenv(patches.TRUST_ENV, raising=False)
    assert cli.main(["info"]) == 0
    assert "weights_only=True, allowlist argparse.Namespace" in capsys.readouterr().out
    monkeypatch.setenv(patches.TRUST_ENV, "1")
    assert cli.main(["info"]) == 0
    assert "trusted, loaded with weights_only=False" in capsys.readouterr().out


def test_release_model_refuses_a_malicious_checkpoint_too(trained, evil, cli):
    path, marker = evil
    assert_one_line(*cli("release_model", "-m", path, "-o", trained / "released.pt"),
                    "needs the global", "open")
    assert not marker.exists() and not (trained / "released.pt").exists()


def test_degenerate_checkpoint_still_translates(trained, cli, monkeypatch):
    """The kept-count refusal is for training: a checkpoint whose options would be refused now
    (made before the check) still translates, since nothing is dropped at inference; a resume
    from it is refused."""
    import onmt.bin.translate

    ckpt = torch.load(trained / "avg.pt", weights_only=False)
    ckpt["opt"].dropout = [0.97]
    torch.save(ckpt, trained / "degenerate.pt")
    out = trained / "degenerate.hyp"
    monkeypatch.setattr(sys, "argv", ["onmt_translate", "-model", str(trained / "degenerate.pt"),
                                      "-src", str(trained / "src.txt"), "-output", str(out),
                                      "-max_length", "5"])
    onmt.bin.translate.main()
    assert len(out.read_text().splitlines()) == 3
    code, err = cli("train", *train_args(trained, "-train_from", trained / "degenerate.pt",
                                         "-save_model", trained / "never"))
    assert_one_line(code, err, "-dropout 0.97", "= 0 of 16")


def test_average_of_different_models(trained, cli):
    ckpt = torch.load(trained / "avg.pt", weights_only=False)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = ckpt["model"][name][:1].clone()
    torch.save(ckpt, trained / "other_shape.pt")
    del ckpt["model"][name]
    torch.save(ckpt, trained / "other_keys.pt")
    for other in ("other_shape.pt", "other_keys.pt"):
        assert_one_line(*cli("average_models", "-models", trained / "model_step_1.pt",
                             trained / other, "-output", trained / "never.pt"),
                        "are not checkpoints of the same model", "their parameters differ")
