"""One recipe pipeline for every language pair: baseline vs structured dropout, same everything else.

Stages (each skipped when its output exists, so a rerun after a crash continues; training resumes
from its last checkpoint):

1. prepare   raw corpus files -> ``work/data/{train,valid,test}.{src,tgt}`` (line counts checked)
2. spm       a joint sentencepiece model, the encoded splits, ``onmt_build_vocab``
3. train     the baseline (``brnn`` + ``rnn``) and the sdrop model (``sdrop_brnn`` + ``sdrop_rnn``)
4. translate the test set (beam 5), sentencepiece decoded
5. score     sacrebleu BLEU and chrF (plus tokenized BLEU for the tokenized IWSLT references)
6. report    ``report.md``, ``summary.json``, ``curves.png`` in the output folder
"""
from __future__ import annotations

import json
import lzma
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SdropError

MODELS = {
    "baseline": ["-encoder_type", "brnn", "-decoder_type", "rnn"],
    "sdrop": ["-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn"],
}


@dataclass(frozen=True)
class Pair:
    """A language pair: its raw files per split as (file stem, first line, end line or None)."""

    name: str
    src: str
    tgt: str
    splits: dict
    spm_vocab: int
    tokenized_refs: bool        # references are Moses-tokenized: also report tokenized BLEU
    source_note: str


@dataclass(frozen=True)
class Profile:
    name: str
    train_args: tuple
    train_steps: int
    valid_steps: int
    split_override: dict = field(default_factory=dict)
    spm_vocab: int | None = None


PAIRS = {
    "iwslt14-deen": Pair(
        "iwslt14-deen", "de", "en",
        {"train": ("train", 0, None), "valid": ("valid", 0, None), "test": ("test", 0, None)},
        10000, True,
        "fairseq examples/translation/prepare-iwslt14.sh output before BPE (train/valid/test)"),
    "iwslt15-envi": Pair(
        "iwslt15-envi", "en", "vi",
        {"train": ("train", 0, None), "valid": ("tst2012", 0, None), "test": ("tst2013", 0, None)},
        12000, True, "Stanford NLP IWSLT'15 En-Vi (train, tst2012, tst2013)"),
    "multi30k-ende": Pair(
        "multi30k-ende", "en", "de",
        {"train": ("train", 0, None), "valid": ("valid", 0, None), "test": ("test2016", 0, None)},
        8000, False, "Multi30k task 1 raw text (train, val, test_2016_flickr)"),
    "sample-deen": Pair(
        "sample-deen", "de", "en",
        {"train": ("train", 0, None), "valid": ("valid", 0, None), "test": ("test", 0, None)},
        4000, True, "the bundled IWSLT'14 De-En sample in data/iwslt14-sample"),
}

_COMMON = ("-batch_type", "sents", "-bucket_size", "4096", "-num_workers", "0",
           "-report_every", "50", "-seed", "1", "-dropout", "0.3")
_FULL = ("-layers", "2", "-hidden_size", "500", "-word_vec_size", "500", "-batch_size", "64",
         "-global_attention", "general", "-input_feed", "1")
_SMALL = ("-layers", "2", "-hidden_size", "256", "-word_vec_size", "256", "-batch_size", "64",
          "-optim", "adam", "-learning_rate", "0.001")

PROFILES = {
    # paper scale: OpenNMT-py defaults (2x500, SGD 1.0), to convergence on a GPU
    "full": Profile("full", _COMMON + _FULL + ("-optim", "sgd", "-learning_rate", "1.0",
                                               "-start_decay_steps", "30000",
                                               "-decay_steps", "5000"), 50000, 2500),
    # the full-size model for a fixed number of steps that fits a few minutes on one H100
    "gpu-short": Profile("gpu-short", _COMMON + _FULL + ("-optim", "adam", "-learning_rate",
                                                         "0.001"), 3000, 500),
    # both models finish on a 2-core CPU in about 30 minutes each
    "cpu-small": Profile("cpu-small", _COMMON + _SMALL, 2500, 250),  # ~25 min per model here
    # IWSLT'14 De-En without its training set: train on the valid split, hold out its last 500
    "local-subset": Profile(
        "local-subset", _COMMON + _SMALL, 1500, 250,
        {"train": ("valid", 0, 6783), "valid": ("valid", 6783, None), "test": ("test", 0, None)},
        spm_vocab=6000),
    # `make demo`: a few minutes per model on the bundled sample
    "demo": Profile("demo", _COMMON + ("-layers", "2", "-hidden_size", "192", "-word_vec_size",
                                       "192", "-batch_size", "32", "-optim", "adam",
                                       "-learning_rate", "0.002", "-report_every", "25"),
                    400, 100),
    # tests: seconds
    "tiny": Profile("tiny", _COMMON + ("-layers", "1", "-hidden_size", "16", "-word_vec_size",
                                       "16", "-batch_size", "16", "-report_every", "5"), 10, 5,
                    {"train": ("train", 0, 200), "valid": ("valid", 0, 40),
                     "test": ("test", 0, 8)}, spm_vocab=300),
}


def _banner(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def _read_lines(path: Path) -> list[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _raw_file(raw: Path, stem: str, lang: str, pair: Pair) -> Path:
    for cand in (raw / f"{stem}.{lang}", raw / f"{stem}.{lang}.xz"):
        if cand.exists():
            return cand
    raise SdropError(f"{pair.name}: {raw / f'{stem}.{lang}'} (or .xz) not found; "
                     f"expected {pair.source_note} in {raw}")


def _write(path: Path, lines) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves a half-written stage output


def _stream(cmd: list[str], log_path: Path, deadline: float | None = None) -> int | None:
    """Run ``cmd``, echoing its output and appending it to ``log_path``; raise on failure.

    With a ``deadline`` (time.time()), a training run is stopped at its first step report past
    it that follows a finished checkpoint save (OpenNMT-py reports a step before validating and
    saving it, so a checkpoint is complete once the next report appears). Returns the step of
    that last complete checkpoint when it was stopped so, else None."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    saving = saved = None
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            if "Warning" not in line and "@custom_" not in line:
                print("  " + line, end="", flush=True)
            if "Saving checkpoint" in line:
                saving = _step_of(Path(line.split("Saving checkpoint", 1)[1].strip()))
            elif " Step " in line:
                saved = saving
                if deadline is not None and saved is not None and time.time() > deadline:
                    proc.terminate()
                    proc.wait()
                    return saved
    if proc.returncode:
        raise SdropError(f"command failed with status {proc.returncode} (log: {log_path}): "
                         + " ".join(cmd[:4]) + " ...")
    return None


def _step_of(checkpoint: Path) -> int:
    """``model_step_2500.pt`` -> 2500."""
    return int(checkpoint.stem.rsplit("_", 1)[1])


def _onmt(tool: str) -> list[str]:
    return [sys.executable, "-m", "onmt_sdrop.cli", tool]


class Pipeline:
    def __init__(self, pair: str, profile: str, raw_dir, work_dir, out_dir, *, steps=None,
                 time_budget_min=None, gpu=False, extra_args=(), models=("baseline", "sdrop")):
        if pair not in PAIRS:
            raise SdropError(f"unknown pair {pair!r}; one of {', '.join(PAIRS)}")
        if profile not in PROFILES:
            raise SdropError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
        self.pair, self.profile = PAIRS[pair], PROFILES[profile]
        self.raw = Path(raw_dir)
        if not self.raw.is_dir():
            raise SdropError(f"raw-data folder not found: {self.raw}")
        self.work, self.out = Path(work_dir), Path(out_dir)
        self.data = self.work / "data"
        self.steps = int(steps) if steps else self.profile.train_steps
        if time_budget_min is not None and time_budget_min <= 0:
            raise SdropError(f"--time-budget must be > 0 minutes, got {time_budget_min}")
        self.budget_s = None if time_budget_min is None else 60.0 * time_budget_min
        self.gpu, self.extra, self.models = gpu, list(extra_args), list(models)

    # ------------------------------------------------------------------ stages
    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        splits = {**self.pair.splits, **self.profile.split_override}
        for split, (stem, first, end) in splits.items():
            outs = [self.data / f"{split}.{side}" for side in ("src", "tgt")]
            if all(p.exists() for p in outs):
                continue
            _banner(f"{self.pair.name}: prepare {split} from {stem}")
            sides = [_read_lines(_raw_file(self.raw, stem, lang, self.pair))
                     for lang in (self.pair.src, self.pair.tgt)]
            if len(sides[0]) != len(sides[1]):
                raise SdropError(f"{self.pair.name}: {stem}.{self.pair.src} has {len(sides[0])} "
                                 f"lines but {stem}.{self.pair.tgt} has {len(sides[1])}")
            for path, lines in zip(outs, sides):
                _write(path, lines[first:end])

    def spm(self) -> None:
        import sentencepiece as spm

        model = self.work / "spm.model"
        if not model.exists():
            vocab = self.profile.spm_vocab or self.pair.spm_vocab
            _banner(f"{self.pair.name}: joint sentencepiece model ({vocab} pieces)")
            spm.SentencePieceTrainer.train(
                input=[str(self.data / "train.src"), str(self.data / "train.tgt")],
                model_prefix=str(self.work / "spm"), vocab_size=vocab, model_type="unigram",
                character_coverage=1.0, input_sentence_size=2_000_000, shuffle_input_sentence=True,
                minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=str(model))
        for split in ("train", "valid", "test"):
            for side in ("src", "tgt"):
                dst = self.data / f"{split}.sp.{side}"
                if not dst.exists():
                    lines = (self.data / f"{split}.{side}").read_text(encoding="utf-8").splitlines()
                    _write(dst, (" ".join(p) for p in sp.encode(lines, out_type=str)))
        self._write_config()
        if not (self.work / "vocab.src").exists():
            _banner(f"{self.pair.name}: onmt_build_vocab")
            _stream(_onmt("build_vocab") + ["-config", str(self.config), "-n_sample", "-1"],
                    self.work / "build_vocab.log")

    @property
    def config(self) -> Path:
        return self.work / "data.yaml"

    def _write_config(self) -> None:
        d = self.data
        self.config.write_text(
            f"save_data: {self.work}/onmt\nsrc_vocab: {self.work}/vocab.src\n"
            f"tgt_vocab: {self.work}/vocab.tgt\noverwrite: true\n"
            f"src_vocab_size: 100000\ntgt_vocab_size: 100000\n"
            f"data:\n  corpus_1:\n    path_src: {d}/train.sp.src\n    path_tgt: {d}/train.sp.tgt\n"
            f"  valid:\n    path_src: {d}/valid.sp.src\n    path_tgt: {d}/valid.sp.tgt\n")

    def _checkpoints(self, name: str) -> list[Path]:
        ckpts = (self.work / name).glob("model_step_*.pt")
        return sorted(ckpts, key=_step_of)

    def final_step(self, name: str) -> int:
        """The step of the model that is translated: the last one, or where the budget ended."""
        budget = self.work / name / "budget.json"
        return json.loads(budget.read_text())["step"] if budget.exists() else self.steps

    def final_checkpoint(self, name: str) -> Path:
        return self.work / name / f"model_step_{self.final_step(name)}.pt"

    def _train_logs(self, name: str) -> list[Path]:
        return sorted((self.work / name).glob("train.*.log"))

    def train(self, name: str) -> None:
        final = self.final_checkpoint(name)
        if final.exists():
            return
        run_dir = self.work / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = _onmt("train") + ["-config", str(self.config), "-save_model", str(run_dir / "model"),
                                *self.profile.train_args, "-train_steps", str(self.steps),
                                "-valid_steps", str(self.profile.valid_steps),
                                "-save_checkpoint_steps", str(self.profile.valid_steps),
                                "-keep_checkpoint", "2", *MODELS[name], *self.extra]
        if self.gpu:
            cmd += ["-world_size", "1", "-gpu_ranks", "0"]
        done = self._checkpoints(name)
        resume = f" (resuming from {done[-1].name})" if done else ""
        if done:
            cmd += ["-train_from", str(done[-1])]
        deadline = None
        if self.budget_s is not None:
            from .report import TrainLog

            used = TrainLog.parse(p.read_text() for p in self._train_logs(name)).wall_s if done \
                else 0.0
            deadline = time.time() + self.budget_s - used
            resume += f", time budget {self.budget_s / 60:g} min ({used:.0f} s used)"
        _banner(f"{self.pair.name}/{self.profile.name}: train {name}, {self.steps} steps{resume}")
        step = _stream(cmd, run_dir / f"train.{len(self._train_logs(name))}.log", deadline)
        if step is not None:
            for ckpt in self._checkpoints(name):   # one being written when stopped is not whole
                if _step_of(ckpt) > step:
                    ckpt.unlink()
            (run_dir / "budget.json").write_text(json.dumps(
                {"step": step, "budget_s": self.budget_s}) + "\n")
            _banner(f"{self.pair.name}: {name} stopped by the time budget; its last checkpoint "
                    f"is step {step}")

    def translate(self, name: str) -> Path:
        # outputs are named by the checkpoint's step: a rerun with more --steps never reuses them
        hyp = self.work / name / f"test.step{self.final_step(name)}.hyp"
        if hyp.exists():
            return hyp
        _banner(f"{self.pair.name}: translate the test set with {name} (beam 5)")
        hyp_sp = hyp.with_suffix(".hyp.sp")
        cmd = _onmt("translate") + ["-model", str(self.final_checkpoint(name)),
                                    "-src", str(self.data / "test.sp.src"),
                                    "-output", str(hyp_sp), "-beam_size", "5",
                                    "-batch_size", "32", "-max_length", "200"]
        if self.gpu:
            cmd += ["-gpu", "0"]
        _stream(cmd, self.work / name / "translate.log")
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(self.work / "spm.model"))
        pieces = hyp_sp.read_text(encoding="utf-8").splitlines()
        _write(hyp, (sp.decode(p.split()) for p in pieces))
        return hyp

    def score(self, name: str) -> dict:
        import sacrebleu

        path = self.work / name / f"scores.step{self.final_step(name)}.json"
        if path.exists():
            return json.loads(path.read_text())
        hyps = self.translate(name).read_text(encoding="utf-8").splitlines()
        refs = (self.data / "test.tgt").read_text(encoding="utf-8").splitlines()
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        scores = {"bleu": round(bleu.corpus_score(hyps, [refs]).score, 2),
                  "bleu_signature": str(bleu.get_signature()),
                  "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
                  "chrf_signature": str(chrf.get_signature())}
        if self.pair.tokenized_refs:
            tok = sacrebleu.metrics.BLEU(tokenize="none")
            scores["bleu_tok"] = round(tok.corpus_score(hyps, [refs]).score, 2)
        path.write_text(json.dumps(scores, indent=2) + "\n")
        return scores

    def report(self, command: str, device: str, notes=()) -> dict:
        from .report import TrainLog, write_report

        logs = {n: TrainLog.parse(p.read_text() for p in self._train_logs(n))
                for n in self.models}
        scores = {n: self.score(n) for n in self.models}
        _banner(f"{self.pair.name}: report in {self.out}")
        budget = "" if self.budget_s is None else (
            f"a training time budget of {self.budget_s / 60:g} min per model, which ended at "
            + ", ".join(f"step {self.final_step(n)} ({n})" for n in self.models) + "; at most ")
        notes = list(notes) + [
            f"{budget}{self.steps} training steps per model, same seed and hyper-parameters; the "
            "sdrop model adds `" + " ".join(MODELS["sdrop"]) + "` to the baseline's options.",
            "Model options: `" + " ".join(self.profile.train_args + tuple(self.extra)) + "`.",
            "tok/s: OpenNMT-py's logged target tokens per second, mean over report steps after "
            "the first; wall times from the same logs (training only, validation included)."]
        return write_report(self.out, title=f"{self.pair.name} ({self.profile.name}): baseline vs "
                            "structured dropout", pair=self.pair.name, profile=self.profile.name,
                            device=device, command=command, logs=logs, scores=scores, notes=notes)

    def run(self, command: str, device: str) -> dict:
        t0 = time.time()
        self.prepare()
        self.spm()
        for name in self.models:
            self.train(name)
        for name in self.models:
            self.score(name)
        summary = self.report(command, device)
        print(f"done in {time.time() - t0:.0f} s: {self.out / 'report.md'}", flush=True)
        return summary


def device_name(gpu: bool) -> str:
    import platform

    if gpu:
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m onmt_sdrop.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair", choices=sorted(PAIRS))
    ap.add_argument("--profile", default="cpu-small", choices=sorted(PROFILES))
    ap.add_argument("--raw", required=True, help="folder with the raw corpus files")
    ap.add_argument("--work", required=True, help="working folder (checkpoints, encoded data)")
    ap.add_argument("--out", required=True, help="where report.md, summary.json, curves.png go")
    ap.add_argument("--steps", type=int, help="training steps per model (default: the profile's)")
    ap.add_argument("--time-budget", type=float, metavar="MIN",
                    help="training wall-clock minutes per model (stops at the first finished "
                         "checkpoint past it; --steps stays the upper bound)")
    ap.add_argument("--gpu", action="store_true", help="train and translate on GPU 0")
    ap.add_argument("--models", default="baseline,sdrop", help="comma-separated subset")
    ap.add_argument("--extra", default="", help="more onmt_train options for both models")
    args = ap.parse_args(argv)
    command = "python -m onmt_sdrop.pipeline " + " ".join(shlex.quote(a) for a in (
        argv if argv is not None else sys.argv[1:]))
    try:
        pipe = Pipeline(args.pair, args.profile, args.raw, args.work, args.out, steps=args.steps,
                        time_budget_min=args.time_budget, gpu=args.gpu,
                        extra_args=shlex.split(args.extra), models=args.models.split(","))
        pipe.run(command, device_name(args.gpu))
    except SdropError as exc:
        print(f"pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
