"""Reading OpenNMT-py training logs and writing the baseline-vs-sdrop comparison report."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

STEP_RE = re.compile(r"Step\s+(\d+)/\s*\d+; acc:\s*([\d.]+); ppl:\s*([\w.]+);.*?"
                     r"(\d+)/\s*(\d+) tok/s;\s*(\d+) sec")
VALID_RE = re.compile(r"Validation perplexity:\s*([\w.]+)")


@dataclass
class TrainLog:
    """What a run's logs say: per report step (step, seconds, train ppl, tgt tok/s) and valid ppl."""

    steps: list = field(default_factory=list)   # (step, wall_s, train_ppl, tgt_tok_s)
    valid: list = field(default_factory=list)   # (step, wall_s, valid_ppl)

    @classmethod
    def parse(cls, texts) -> "TrainLog":
        """Parse the logs of one run, one text per attempt (a resumed run restarts its clock)."""
        log, offset = cls(), 0.0
        for text in texts:
            last = 0.0
            for line in text.splitlines():
                m = STEP_RE.search(line)
                if m:
                    last = float(m.group(6))
                    log.steps.append((int(m.group(1)), offset + last, float(m.group(3)),
                                      float(m.group(5))))
                    continue
                v = VALID_RE.search(line)
                if v and log.steps:
                    log.valid.append((log.steps[-1][0], log.steps[-1][1], float(v.group(1))))
            offset += last
        return log

    @property
    def wall_s(self) -> float:
        return self.steps[-1][1] if self.steps else float("nan")

    @property
    def tok_s(self) -> float:
        """Mean target tokens per second over the report steps, the first (warm-up) left out."""
        rates = [s[3] for s in self.steps[1:]] or [s[3] for s in self.steps]
        return sum(rates) / len(rates) if rates else float("nan")

    @property
    def best_valid_ppl(self) -> float:
        return min((v[2] for v in self.valid), default=float("nan"))

    @property
    def final_valid_ppl(self) -> float:
        return self.valid[-1][2] if self.valid else float("nan")

    def time_to_ppl(self, target: float) -> float:
        """Wall seconds until valid ppl first reached ``target`` (nan if never)."""
        return next((v[1] for v in self.valid if v[2] <= target), float("nan"))


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _fmt(x, spec=".2f", unit=""):
    return "n/a" if _missing(x) else format(x, spec) + unit


def _clean(obj):
    """NaN (never reached, not measured) as JSON null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    return None if _missing(obj) else obj


def plot_curves(logs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, log in logs.items():
        if log.valid:
            steps, secs, ppl = zip(*log.valid)
            axes[0].plot(steps, ppl, marker="o", label=name)
            axes[1].plot([s / 60 for s in secs], ppl, marker="o", label=name)
        elif log.steps:
            steps, secs, ppl, _ = zip(*log.steps)
            axes[0].plot(steps, ppl, label=f"{name} (train)")
            axes[1].plot([s / 60 for s in secs], ppl, label=f"{name} (train)")
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock time (min)")
    for ax in axes:
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir: Path, *, title: str, pair: str, profile: str, device: str, command: str,
                 logs: dict, scores: dict, notes: list[str] | None = None) -> dict:
    """Write ``report.md``, ``summary.json`` and ``curves.png`` for the runs in ``logs``.

    ``logs``: {"baseline": TrainLog, "sdrop": TrainLog}; ``scores``: {name: {"bleu": ..,
    "chrf": .., "bleu_signature": .., ...}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = logs["baseline"]
    target = base.final_valid_ppl
    rows = []
    for name, log in logs.items():
        sc = scores.get(name, {})
        ttp = log.time_to_ppl(target)
        rows.append((name, sc.get("bleu"), sc.get("bleu_tok"), sc.get("chrf"), log.best_valid_ppl,
                     log.tok_s, log.wall_s, ttp,
                     log.tok_s / base.tok_s if base.tok_s else float("nan"),
                     base.time_to_ppl(target) / ttp if ttp else float("nan")))
    has_tok = any(r[2] is not None for r in rows)
    head = ["model", "BLEU"] + (["tok. BLEU"] if has_tok else []) + [
        "chrF", "best valid ppl", "train tgt tok/s", "wall to last step (s)",
        f"wall to baseline's final valid ppl {_fmt(target)} (s)", "tok/s speed-up",
        "time-to-ppl speed-up"]
    lines = [f"# {title}", "", f"pair `{pair}`, profile `{profile}`, device: {device}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r[0], _fmt(r[1])] + ([_fmt(r[2])] if has_tok else []) + [
            _fmt(r[3]), _fmt(r[4]), _fmt(r[5], ".0f"), _fmt(r[6], ".0f"), _fmt(r[7], ".0f"),
            _fmt(r[8], ".3f", "x"), _fmt(r[9], ".3f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    sigs = {s.get("bleu_signature") for s in scores.values()} | {
        s.get("chrf_signature") for s in scores.values()}
    lines += ["", "Scores: sacrebleu " + "; ".join(sorted(x for x in sigs if x)), "",
              "![validation perplexity](curves.png)", "", f"Produced by: `{command}`"]
    lines += [""] + [f"- {n}" for n in (notes or [])]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    plot_curves(logs, out_dir / "curves.png", title)
    summary = {
        "pair": pair, "profile": profile, "device": device,
        "bleu": {n: scores.get(n, {}).get("bleu") for n in logs},
        "chrf": {n: scores.get(n, {}).get("chrf") for n in logs},
        "tok_s": {n: round(log.tok_s, 1) for n, log in logs.items()},
        "wall_s": {n: round(log.wall_s, 1) for n, log in logs.items()},
        "best_valid_ppl": {n: log.best_valid_ppl for n, log in logs.items()},
        "time_to_baseline_ppl_s": {n: log.time_to_ppl(target) for n, log in logs.items()},
    }
    if has_tok:
        summary["bleu_tok"] = {n: scores.get(n, {}).get("bleu_tok") for n in logs}
    (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
    return summary
