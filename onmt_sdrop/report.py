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
SAVE_RE = re.compile(r"Saving checkpoint \S*model_step_(\d+)\.pt")


@dataclass
class TrainLog:
    """What a run's logs say: per report step (step, seconds, train ppl, tgt tok/s) and valid ppl."""

    steps: list = field(default_factory=list)   # (step, wall_s, train_ppl, tgt_tok_s)
    valid: list = field(default_factory=list)   # (step, wall_s, valid_ppl)
    saved: list = field(default_factory=list)   # steps whose checkpoint save was started

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
                    continue
                s = SAVE_RE.search(line)
                if s:
                    log.saved.append(int(s.group(1)))
            offset += last
        return log

    @property
    def wall_s(self) -> float:
        return self.steps[-1][1] if self.steps else float("nan")

    @property
    def last_step(self) -> int:
        return self.steps[-1][0] if self.steps else 0

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

    def valid_ppl_at(self, step: int) -> float:
        """The last validation perplexity logged for ``step`` (nan if none)."""
        return next((v[2] for v in reversed(self.valid) if v[0] == step), float("nan"))

    def wall_at(self, step: int) -> float:
        return next((v[1] for v in reversed(self.valid) if v[0] == step), float("nan"))

    def best_step(self, steps) -> int | None:
        """Of ``steps`` (the kept checkpoints), the one with the lowest valid ppl (None: none)."""
        scored = [(self.valid_ppl_at(s), s) for s in steps]
        scored = [(p, s) for p, s in scored if not math.isnan(p)]
        return min(scored)[1] if scored else None

    def time_to_ppl(self, target: float) -> float:
        """Wall seconds until valid ppl first reached ``target`` (nan if never)."""
        return next((v[1] for v in self.valid if v[2] <= target), float("nan"))


@dataclass
class Row:
    """One model's line of the report."""

    name: str
    bleu: float | None          # sacrebleu 13a
    bleu_tok: float | None      # tokenized BLEU (tokenize=none on tokenized references)
    chrf: float | None
    best_valid_ppl: float
    step: int | None            # the checkpoint translated
    step_valid_ppl: float
    tok_s: float
    wall_s: float
    time_to_target: float       # wall s to the baseline's best valid ppl
    tok_speedup: float
    time_speedup: float


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _fmt(x, spec=".2f", unit=""):
    return "n/a" if _missing(x) else format(x, spec) + unit


def _clean(obj):
    """NaN (never reached, not measured) as JSON null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return None if _missing(obj) else obj


def zoomed_ylim(curves: list[list[float]]) -> tuple[float, float] | None:
    """A linear y range around where the curves meet: from just under the lowest value up to
    twice the highest final value (early, far-off points are cut), or the highest value if less."""
    curves = [[v for v in c if not _missing(v)] for c in curves]
    curves = [c for c in curves if c]
    if not curves:
        return None
    vals = [v for c in curves for v in c]
    lo = min(vals)
    hi = min(max(vals), 2 * max(c[-1] for c in curves))
    pad = max(hi - lo, 0.05 * abs(hi) or 1.0) * 0.05
    return lo - pad, hi + pad


def _setup_matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    return plt, MaxNLocator, ScalarFormatter


def plot_curves(logs: dict, path: Path, title: str) -> None:
    """Valid ppl against step and against wall-clock time, linear axis zoomed to the meeting."""
    plt, MaxNLocator, ScalarFormatter = _setup_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    curves = []
    for name, log in logs.items():
        if log.valid:
            steps, secs, ppl = zip(*log.valid)
            label = name
        elif log.steps:
            steps, secs, ppl, _ = zip(*log.steps)
            label = f"{name} (train)"
        else:
            continue
        curves.append(list(ppl))
        axes[0].plot(steps, ppl, marker="o", label=label)
        axes[1].plot([s / 60 for s in secs], ppl, marker="o", label=label)
    lim = zoomed_ylim(curves)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock time (min)")
    for ax in axes:
        ax.set_ylabel("validation perplexity")
        if lim:
            ax.set_ylim(*lim)
        ax.yaxis.set_major_locator(MaxNLocator(8))
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}\n(linear axis zoomed to where the curves meet: early points may lie "
                 "above it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bleu_time(points: dict, path: Path, title: str) -> None:
    """``points``: {label: [(wall_s, bleu), ...]}: valid BLEU (greedy) against wall-clock time."""
    plt, MaxNLocator, _ = _setup_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in points.items():
        pts = sorted(p for p in pts if not _missing(p[0]))
        if pts:
            ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("training wall-clock time (min)")
    ax.set_ylabel("valid BLEU (greedy)")
    ax.yaxis.set_major_locator(MaxNLocator(8))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rows_of(logs: dict, scores: dict, steps: dict) -> tuple[list[Row], float]:
    """The report's rows; the speed-ups are against the baseline when it is among ``logs``."""
    base = logs.get("baseline")
    target = base.best_valid_ppl if base else float("nan")
    rows = []
    for name, log in logs.items():
        sc = scores.get(name, {})
        ttp = log.time_to_ppl(target)
        step = steps.get(name)
        rows.append(Row(
            name, sc.get("bleu"), sc.get("bleu_tok"), sc.get("chrf"), log.best_valid_ppl, step,
            log.valid_ppl_at(step) if step is not None else float("nan"), log.tok_s, log.wall_s,
            ttp, log.tok_s / base.tok_s if base and base.tok_s else float("nan"),
            base.time_to_ppl(target) / ttp if base and ttp else float("nan")))
    return rows, target


def write_report(out_dir: Path, *, title: str, pair: str, profile: str, device: str, command: str,
                 logs: dict, scores: dict, notes: list[str] | None = None, steps: dict | None = None,
                 valid_bleu: dict | None = None, evidence: str | None = None) -> dict:
    """Write ``report.md``, ``summary.json``, ``curves.png`` (and ``bleu_time.png`` when
    ``valid_bleu``) for the runs in ``logs``.

    ``logs``: {name: TrainLog} for any of baseline, sdrop; ``scores``: {name: {"bleu": ..,
    "chrf": .., "bleu_signature": .., ...}}; ``steps``: {name: the checkpoint step translated};
    ``valid_bleu``: {name: {step: greedy valid BLEU}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or {}
    rows, target = rows_of(logs, scores, steps)
    has_tok = any(r.bleu_tok is not None for r in rows)
    has_base = "baseline" in logs
    # the literature reports tokenized BLEU on the tokenized IWSLT references: it comes first
    head = ["model"] + (["BLEU (tok.)", "BLEU 13a"] if has_tok else ["BLEU"]) + [
        "chrF", "translated step (its valid ppl)", "best valid ppl", "train tgt tok/s",
        "wall to last step (s)"]
    if has_base:
        head += [f"wall to baseline's best valid ppl {_fmt(target)} (s)", "tok/s speed-up",
                 "time-to-ppl speed-up"]
    lines = [f"# {title}", "", f"pair `{pair}`, profile `{profile}`, device: {device}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name] + ([_fmt(r.bleu_tok), _fmt(r.bleu)] if has_tok else [_fmt(r.bleu)]) + [
            _fmt(r.chrf), f"{r.step if r.step is not None else 'n/a'} ({_fmt(r.step_valid_ppl)})",
            _fmt(r.best_valid_ppl), _fmt(r.tok_s, ".0f"), _fmt(r.wall_s, ".0f")]
        if has_base:
            cells += [_fmt(r.time_to_target, ".0f"), _fmt(r.tok_speedup, ".3f", "x"),
                      _fmt(r.time_speedup, ".3f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    if not has_base:
        lines += ["", "No baseline in this run (`--models`): no speed-ups."]
    sigs = []
    for key in ("bleu_tok_signature", "bleu_signature", "chrf_signature"):
        sigs += sorted({s[key] for s in scores.values() if s.get(key)})
    lines += ["", "Scores: sacrebleu " + "; ".join(sigs),
              "", "Translated: the kept checkpoint with the best validation perplexity (beam 5).",
              "", "![validation perplexity](curves.png)"]
    if valid_bleu:
        lines += ["", "![valid BLEU (greedy) against wall-clock time](bleu_time.png)"]
    if evidence:
        lines += ["", evidence]
    lines += ["", f"Produced by: `{command}`"]
    lines += [""] + [f"- {n}" for n in (notes or [])]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    plot_curves(logs, out_dir / "curves.png", title)
    if valid_bleu:
        plot_bleu_time({n: [(logs[n].wall_at(int(s)), b) for s, b in vb.items()]
                        for n, vb in valid_bleu.items() if n in logs},
                       out_dir / "bleu_time.png", title)
    summary = {
        "pair": pair, "profile": profile, "device": device,
        "headline": "bleu_tok" if has_tok else "bleu",
        "bleu": {r.name: r.bleu for r in rows},
        "chrf": {r.name: r.chrf for r in rows},
        "translated_step": {r.name: r.step for r in rows},
        "tok_s": {r.name: round(r.tok_s, 1) for r in rows},
        "wall_s": {r.name: round(r.wall_s, 1) for r in rows},
        "best_valid_ppl": {r.name: r.best_valid_ppl for r in rows},
        "time_to_baseline_best_ppl_s": {r.name: r.time_to_target for r in rows},
        "valid": {n: [list(v) for v in log.valid] for n, log in logs.items()},
    }
    if has_tok:
        summary["bleu_tok"] = {r.name: r.bleu_tok for r in rows}
    if valid_bleu:
        summary["valid_bleu_greedy"] = {n: {str(s): b for s, b in vb.items()}
                                        for n, vb in valid_bleu.items()}
    (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
    return summary
