"""The stages of the recipe pipeline: baseline vs structured dropout, same everything else.

Stages (each skipped when its output exists, so a rerun after a crash continues; training resumes
from its last intact checkpoint):

1. prepare     raw corpus files -> ``work/data/{train,valid,test}.{src,tgt}`` (line counts checked)
2. spm         a joint sentencepiece model, the encoded splits, ``onmt_build_vocab``
3. train       the baseline (``brnn`` + ``rnn``) and the sdrop model (``sdrop_brnn`` + ``sdrop_rnn``)
4. translate   the test set (beam 5) with the kept checkpoint best on validation, spm-decoded;
               optionally the valid set (greedy) at every checkpoint: BLEU against wall time
6. score       sacrebleu BLEU and chrF (tokenized BLEU first for the tokenized IWSLT references)
7. evidence    hypotheses, scores with signatures, train/translate logs into ``OUT/evidence/``
8. report      ``report.md``, ``summary.json``, ``curves.png`` (+ ``bleu_time.png``) in ``OUT``
"""
from __future__ import annotations

import hashlib
import json
import os
import lzma
import shutil
import time
from pathlib import Path

from ..errors import SdropError
from ..report import TrainLog, write_report
from .catalogue import MODELS, lookup, splits
from .process import checkpoints, drop_truncated, intact, onmt, prune, step_of, stream

KEEP = 3    # checkpoints kept per model: the best on validation and the newest


def banner(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def read_lines(path: Path) -> list[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def raw_file(raw: Path, stem: str, lang: str, pair) -> Path:
    for cand in (raw / f"{stem}.{lang}", raw / f"{stem}.{lang}.xz"):
        if cand.exists():
            return cand
    raise SdropError(f"{pair.name}: {raw / f'{stem}.{lang}'} (or .xz) not found; "
                     f"expected {pair.source_note} in {raw}")


def write_lines(path: Path, lines) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")   # runs of two seeds may race
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves a half-written stage output


def lines_sha256(lines) -> str:
    return hashlib.sha256("".join(x + "\n" for x in lines).encode("utf-8")).hexdigest()


def bleu_scores(hyps: list[str], refs: list[str], tokenized_refs: bool) -> dict:
    """sacrebleu BLEU (13a) and chrF with signatures; tokenized BLEU (``tokenize=none``) too when
    the references are tokenized text (IWSLT), which is the number the literature reports."""
    import sacrebleu

    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    scores = {"bleu": round(bleu.corpus_score(hyps, [refs]).score, 2),
              "bleu_signature": str(bleu.get_signature()),
              "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
              "chrf_signature": str(chrf.get_signature())}
    if tokenized_refs:
        tok = sacrebleu.metrics.BLEU(tokenize="none")
        scores["bleu_tok"] = round(tok.corpus_score(hyps, [refs]).score, 2)
        scores["bleu_tok_signature"] = str(tok.get_signature())
    return scores


class Pipeline:
    def __init__(self, pair: str, profile: str, raw_dir, work_dir, out_dir, *, steps=None,
                 time_budget_min=None, gpu=False, extra_args=(), models=("baseline", "sdrop"),
                 valid_bleu=None, seed=None):
        self.pair, self.profile = lookup(pair, profile)
        self.raw = Path(raw_dir)
        if not self.raw.is_dir():
            raise SdropError(f"raw-data folder not found: {self.raw}")
        self.work, self.out = Path(work_dir), Path(out_dir)
        self.data = self.work / "data"
        if steps is not None and int(steps) <= 0:
            raise SdropError(f"--steps must be a positive number of steps, got {steps}")
        self.steps = int(steps) if steps else self.profile.train_steps
        if time_budget_min is not None and time_budget_min <= 0:
            raise SdropError(f"--time-budget must be > 0 minutes, got {time_budget_min:g}")
        self.budget_s = None if time_budget_min is None else 60.0 * time_budget_min
        bad = [m for m in models if m not in MODELS]
        if bad or not models:
            raise SdropError(f"unknown model {', '.join(map(repr, bad)) or '(none)'}; "
                             f"a subset of {', '.join(MODELS)}")
        self.gpu, self.extra, self.models = gpu, list(extra_args), list(models)
        self.valid_bleu = self.profile.valid_bleu if valid_bleu is None else bool(valid_bleu)
        self.seed = seed

    # ------------------------------------------------------------------ names
    @property
    def tag(self) -> str:
        """Names a run's files in the shared work folder: runs of other seeds can run at once."""
        return "" if self.seed is None else f"-seed{self.seed}"

    def run_dir(self, name: str) -> Path:
        return self.work / f"{name}{self.tag}"

    @property
    def config(self) -> Path:
        return self.work / "data.yaml"

    def _train_logs(self, name: str) -> list[Path]:
        return sorted(self.run_dir(name).glob("train.*.log"),
                      key=lambda p: int(p.stem.split(".")[1]))

    def train_log(self, name: str) -> TrainLog:
        return TrainLog.parse(p.read_text() for p in self._train_logs(name))

    def final_step(self, name: str) -> int:
        """The last step trained: the profile's (or --steps), or where the budget ended."""
        budget = self.run_dir(name) / "budget.json"
        return json.loads(budget.read_text())["step"] if budget.exists() else self.steps

    def translated_step(self, name: str) -> int:
        """The checkpoint that is translated: of the kept ones up to the final step, the one
        with the best validation perplexity (the final one when none was validated)."""
        final = self.final_step(name)
        kept = [step_of(c) for c in checkpoints(self.run_dir(name)) if step_of(c) <= final]
        best = self.train_log(name).best_step(kept)
        return final if best is None else best

    # ------------------------------------------------------------------ stages
    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        for split, (stem, first, end) in splits(self.pair, self.profile).items():
            outs = [self.data / f"{split}.{side}" for side in ("src", "tgt")]
            if all(p.exists() for p in outs):
                continue
            banner(f"{self.pair.name}: prepare {split} from {stem}")
            sides = [read_lines(raw_file(self.raw, stem, lang, self.pair))
                     for lang in (self.pair.src, self.pair.tgt)]
            if len(sides[0]) != len(sides[1]):
                raise SdropError(f"{self.pair.name}: {stem}.{self.pair.src} has {len(sides[0])} "
                                 f"lines but {stem}.{self.pair.tgt} has {len(sides[1])}")
            for path, lines in zip(outs, sides):
                write_lines(path, lines[first:end])

    def spm(self) -> None:
        import sentencepiece as spm

        model = self.work / "spm.model"
        if not model.exists():
            vocab = self.profile.spm_vocab or self.pair.spm_vocab
            banner(f"{self.pair.name}: joint sentencepiece model ({vocab} pieces)")
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
                    write_lines(dst, (" ".join(p) for p in sp.encode(lines, out_type=str)))
        self._write_config()
        if not (self.work / "vocab.src").exists():
            banner(f"{self.pair.name}: onmt_build_vocab")
            stream(onmt("build_vocab") + ["-config", str(self.config), "-n_sample", "-1"],
                   self.work / "build_vocab.log")

    def _write_config(self) -> None:
        d = self.data   # written atomically: runs of two seeds share it
        write_lines(self.config, [
            f"save_data: {self.work}/onmt\nsrc_vocab: {self.work}/vocab.src\n"
            f"tgt_vocab: {self.work}/vocab.tgt\noverwrite: true\n"
            f"src_vocab_size: 100000\ntgt_vocab_size: 100000\n"
            f"data:\n  corpus_1:\n    path_src: {d}/train.sp.src\n    path_tgt: {d}/train.sp.tgt\n"
            f"  valid:\n    path_src: {d}/valid.sp.src\n    path_tgt: {d}/valid.sp.tgt"])

    def _prune(self, name: str) -> None:
        run_dir = self.run_dir(name)
        log = self.train_log(name)
        prune(run_dir, KEEP, log.best_step([step_of(c) for c in checkpoints(run_dir)]))

    def _check_trained(self, name: str) -> bool:
        """Whether training is done, with its logs behind it. Truncated checkpoints are removed
        (the previous one is used), and so are checkpoints newer than anything the logs show
        (written by a child that trained on, unlogged, after the pipeline died)."""
        run_dir = self.run_dir(name)
        good = drop_truncated(run_dir)
        log = self.train_log(name)
        logged = max(log.saved, default=0)
        unlogged = [c for c in good if step_of(c) > logged]
        if unlogged:
            for c in unlogged:
                c.unlink()
            print(f"{run_dir.name}: {', '.join(c.name for c in unlogged)} not in the training "
                  f"logs (they end at step {log.last_step}): removed, training on from there",
                  flush=True)
            good = [c for c in good if c not in unlogged]
        final = self.final_step(name)
        # done: the final checkpoint is whole and the logs show it saved (a budget stop also
        # logged the step report after it)
        done = any(step_of(c) == final for c in good) and final in log.saved
        if (run_dir / "budget.json").exists() and not done:
            (run_dir / "budget.json").unlink()    # its checkpoint is gone: train on
            return self._check_trained(name)
        return done

    def train(self, name: str) -> None:
        run_dir = self.run_dir(name)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self._check_trained(name):
            return
        seed = [] if self.seed is None else ["-seed", str(self.seed)]
        cmd = onmt("train") + ["-config", str(self.config), "-save_model", str(run_dir / "model"),
                               *self.profile.train_args, *seed, "-train_steps", str(self.steps),
                               "-valid_steps", str(self.profile.valid_steps),
                               "-save_checkpoint_steps", str(self.profile.valid_steps),
                               *MODELS[name], *self.extra, "-keep_checkpoint", "-1"]
        if self.gpu:
            cmd += ["-world_size", "1", "-gpu_ranks", "0"]
        done = checkpoints(run_dir)
        resume = f" (resuming from {done[-1].name})" if done else ""
        if done:
            cmd += ["-train_from", str(done[-1])]
        deadline = None
        if self.budget_s is not None:
            used = self.train_log(name).wall_s if done else 0.0
            deadline = time.time() + self.budget_s - used
            resume += f", time budget {self.budget_s / 60:g} min ({used:.0f} s used)"
        banner(f"{self.pair.name}/{self.profile.name}: train {run_dir.name}, {self.steps} steps"
               f"{resume}")
        state = {"saving": None, "saved": None}

        def watch(line: str) -> bool:
            # OpenNMT-py logs "Saving checkpoint" before writing it; the next step report comes
            # after the file is whole
            if "Saving checkpoint" in line:
                state["saving"] = step_of(Path(line.split("Saving checkpoint", 1)[1].strip()))
            elif " Step " in line and state["saving"] is not None:
                state["saved"], state["saving"] = state["saving"], None
                if not self.valid_bleu:     # valid BLEU needs every checkpoint; it prunes later
                    self._prune(name)
                return deadline is not None and time.time() > deadline
            return False

        log_path = run_dir / f"train.{len(self._train_logs(name))}.log"
        stopped = stream(cmd, log_path, watch)
        if stopped:
            step = state["saved"]
            for ckpt in checkpoints(run_dir):   # one being written when stopped is not whole
                if step_of(ckpt) > step:
                    ckpt.unlink()
            (run_dir / "budget.json").write_text(json.dumps(
                {"step": step, "budget_s": self.budget_s}) + "\n")
            banner(f"{self.pair.name}: {run_dir.name} stopped by the time budget; its last "
                   f"checkpoint is step {step}")
        if not self.valid_bleu:
            self._prune(name)

    def _valid_todo(self, name: str) -> list[Path]:
        done = self._valid_bleu(name)
        return [c for c in checkpoints(self.run_dir(name)) if step_of(c) not in done
                and intact(c) and step_of(c) <= self.final_step(name)]

    def _valid_bleu(self, name: str) -> dict:
        path = self.run_dir(name) / "valid_bleu.json"
        return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() \
            else {}

    def translate_all(self) -> None:
        """Every translation still to do, in one process (one start of torch and OpenNMT-py):
        the test set with each model's best checkpoint (beam 5) and, with valid BLEU on, the valid
        set (its first ``valid_bleu_lines``) with every checkpoint not yet scored (greedy).
        Outputs are named by the checkpoint's step: a rerun with more --steps never reuses them."""
        jobs, valid, tests = [], [], []
        src = self.data / "valid.sp.src"
        n = self.profile.valid_bleu_lines
        for name in self.models:
            run_dir = self.run_dir(name)
            if self.valid_bleu:
                for c in self._valid_todo(name):
                    if n and src.name == "valid.sp.src":
                        src = self.data / f"valid.first{n}.sp.src"
                        write_lines(src, read_lines(self.data / "valid.sp.src")[:n])
                    out = run_dir / f"valid.step{step_of(c)}.hyp.sp"
                    jobs.append(["-model", str(c), "-src", str(src), "-output", str(out),
                                 "-beam_size", "1", "-batch_size", "64"])
                    valid.append((name, step_of(c), out))
            step = self.translated_step(name)
            hyp = run_dir / f"test.step{step}.hyp"
            if not hyp.exists():
                out = hyp.with_suffix(".hyp.sp")
                jobs.append(["-model", str(run_dir / f"model_step_{step}.pt"),
                             "-src", str(self.data / "test.sp.src"), "-output", str(out),
                             "-beam_size", "5", "-batch_size", "32"])
                tests.append((hyp, out))
        if jobs:
            banner(f"{self.pair.name}: translate " + "; ".join(
                [f"the test set with {h.parent.name} step {h.name.split('.')[1][4:]} (best on "
                 "validation, beam 5)" for h, _ in tests]
                + ([f"the valid set at {len(valid)} checkpoints (greedy)"] if valid else [])))
            spec = self.work / f"translate_jobs{self.tag}.json"
            spec.write_text(json.dumps(jobs, indent=1) + "\n")
            common = ["-max_length", "200"] + (["-gpu", "0"] if self.gpu else [])
            stream([*onmt("translate")[:2], "onmt_sdrop.recipe.translate_many", str(spec),
                    *common], self.work / f"translate{self.tag}.log")
        if not (jobs or self.valid_bleu):
            return
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(self.work / "spm.model"))
        for hyp, out in tests:
            write_lines(hyp, (sp.decode(p.split()) for p in read_lines(out)))
        refs = read_lines(self.data / "valid.tgt")[:n]
        for name in self.models:
            scored = self._valid_bleu(name)
            for _, step, out in (v for v in valid if v[0] == name):
                hyps = [sp.decode(p.split()) for p in read_lines(out)]
                sc = bleu_scores(hyps, refs, self.pair.tokenized_refs)
                scored[step] = sc.get("bleu_tok", sc["bleu"])
                out.unlink()
            if scored:
                (self.run_dir(name) / "valid_bleu.json").write_text(
                    json.dumps({str(k): scored[k] for k in sorted(scored)}, indent=1) + "\n")
            self._prune(name)

    def translate(self, name: str) -> Path:
        hyp = self.run_dir(name) / f"test.step{self.translated_step(name)}.hyp"
        if not hyp.exists():
            self.translate_all()
        return hyp

    def score(self, name: str) -> dict:
        step = self.translated_step(name)
        path = self.run_dir(name) / f"scores.step{step}.json"
        if path.exists():
            return {"step": step, **json.loads(path.read_text())}
        hyps = read_lines(self.translate(name))
        refs = read_lines(self.data / "test.tgt")
        stem, first, end = splits(self.pair, self.profile)["test"]
        scores = {**bleu_scores(hyps, refs, self.pair.tokenized_refs), "step": step,
                  "refs": {"pair": self.pair.name, "file": f"{stem}.{self.pair.tgt}",
                           "first": first, "end": end, "lines": len(refs),
                           "sha256": lines_sha256(refs)}}
        path.write_text(json.dumps(scores, indent=2) + "\n")
        return scores

    def evidence(self, name: str) -> None:
        """What stands behind the scores, in ``OUT/evidence/<model>/``: the detokenized test
        hypotheses, the scores with their signatures and references, the logs (xz)."""
        run_dir, dst = self.run_dir(name), self.out / "evidence" / self.run_dir(name).name
        dst.mkdir(parents=True, exist_ok=True)
        scores = self.score(name)
        step = scores["step"]
        with lzma.open(dst / "test.hyp.xz", "wt", encoding="utf-8") as fh:
            fh.write((run_dir / f"test.step{step}.hyp").read_text(encoding="utf-8"))
        shutil.copyfile(run_dir / f"scores.step{step}.json", dst / "scores.json")
        for stem, paths in (("train", self._train_logs(name)),
                            ("translate", [self.work / f"translate{self.tag}.log"])):
            paths = [p for p in paths if p.exists()]
            if paths:
                with lzma.open(dst / f"{stem}.log.xz", "wt", encoding="utf-8") as fh:
                    for p in paths:
                        fh.write(f"==> {p.name} <==\n" + p.read_text(encoding="utf-8"))

    def report(self, command: str, device: str, notes=()) -> dict:
        logs = {n: self.train_log(n) for n in self.models}
        scores = {n: self.score(n) for n in self.models}
        steps = {n: scores[n]["step"] for n in self.models}
        vbleu = {n: self._valid_bleu(n) for n in self.models if self._valid_bleu(n)} or None
        for n in self.models:
            self.evidence(n)
        banner(f"{self.pair.name}: report in {self.out}")
        budget = "" if self.budget_s is None else (
            f"a training time budget of {self.budget_s / 60:g} min per model, which ended at "
            + ", ".join(f"step {self.final_step(n)} ({n})" for n in self.models) + "; at most ")
        seed = "" if self.seed is None else f" (seed {self.seed})"
        notes = list(notes) + [
            f"{budget}{self.steps} training steps per model, same seed{seed} and "
            "hyper-parameters; the sdrop model adds `" + " ".join(MODELS["sdrop"]) +
            "` to the baseline's options.",
            "Model options: `" + " ".join(self.profile.train_args + tuple(self.extra)) + "`.",
            "Translated: of the kept checkpoints (at most the newest "
            f"{KEEP}, the best on validation always among them), the one with the lowest "
            "validation perplexity: " + ", ".join(f"step {steps[n]} ({n})" for n in self.models)
            + ".",
            "tok/s: OpenNMT-py's logged target tokens per second, mean over report steps after "
            "the first; wall times from the same logs (training only, validation included)."]
        if vbleu:
            notes.append("Valid BLEU (bleu_time.png): greedy decoding of the valid set"
                         + (f" (its first {self.profile.valid_bleu_lines} lines)"
                            if self.profile.valid_bleu_lines else "")
                         + " at every checkpoint, " + ("tokenized BLEU" if
                                                       self.pair.tokenized_refs else "BLEU 13a")
                         + ", against the training wall time of that checkpoint.")
        evidence = ("Evidence: `evidence/<model>/` holds the detokenized test hypotheses "
                    "(`test.hyp.xz`), `scores.json` (sacrebleu signatures, the reference file and "
                    "its sha256) and the train/translate logs (`*.log.xz`); "
                    "tests/test_evidence.py recomputes every BLEU from them.")
        return write_report(self.out, title=f"{self.pair.name} ({self.profile.name}): baseline vs "
                            "structured dropout", pair=self.pair.name, profile=self.profile.name,
                            device=device, command=command, logs=logs, scores=scores, notes=notes,
                            steps=steps, valid_bleu=vbleu, evidence=evidence)

    def run(self, command: str, device: str) -> dict:
        t0 = time.time()
        self.prepare()
        self.spm()
        for name in self.models:
            self.train(name)
        self.translate_all()
        for name in self.models:
            self.score(name)
        summary = self.report(command, device)
        print(f"done in {time.time() - t0:.0f} s: {self.out / 'report.md'}", flush=True)
        return summary
