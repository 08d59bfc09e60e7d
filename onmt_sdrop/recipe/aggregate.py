"""Several seeds (and a time-budget run) of the pipeline in one report: BLEU and chrF as mean and
spread, best valid ppl, train tok/s, the wall time to the baseline's best valid ppl as a
speed-up, and valid BLEU (greedy) against wall-clock time for every run.

    python -m onmt_sdrop.recipe.aggregate --out DIR SEED_DIR [SEED_DIR ...] [--budget DIR]

Each SEED_DIR / DIR is a pipeline output folder (its summary.json)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ..report import _fmt, plot_bleu_time

MODELS = ("baseline", "sdrop")


def _stats(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _pm(values, spec=".2f"):
    mean, sd = _stats(values)
    if mean is None:
        return "n/a"
    return f"{mean:{spec}} ± {sd:{spec}}" if len(values) > 1 else f"{mean:{spec}}"


def time_to(valid, target):
    """Wall seconds at the first validation with ppl <= target (None if never)."""
    return next((w for _, w, p in valid if p is not None and p <= target), None)


def aggregate(out: Path, seed_dirs: list[Path], budget_dir: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = [json.loads((d / "summary.json").read_text()) for d in seed_dirs]
    head = runs[0]
    metric = head.get("headline", "bleu")
    per = {m: {"bleu": [], "chrf": [], "best_ppl": [], "tok_s": [], "time_to": [], "speedup": []}
           for m in MODELS}
    for r in runs:
        base_valid = r["valid"].get("baseline", [])
        target = min((p for _, _, p in base_valid), default=None)
        t_base = time_to(base_valid, target) if target else None
        for m in MODELS:
            if m not in r["bleu"]:
                continue
            per[m]["bleu"].append(r[metric][m])
            per[m]["chrf"].append(r["chrf"][m])
            per[m]["best_ppl"].append(r["best_valid_ppl"][m])
            per[m]["tok_s"].append(r["tok_s"][m])
            t = time_to(r["valid"].get(m, []), target) if target else None
            per[m]["time_to"].append(t)
            per[m]["speedup"].append(t_base / t if t and t_base else None)
    label = "BLEU (tok.)" if metric == "bleu_tok" else "BLEU"
    lines = [f"# {head['pair']} ({head['profile']}): baseline vs structured dropout, "
             f"{len(runs)} seeds", "", f"device: {head['device']}", "",
             f"| model | {label} | chrF | best valid ppl | train tgt tok/s | wall to the "
             "baseline's best valid ppl (s) | time-to-ppl speed-up | tok/s speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    base_tok = _stats(per["baseline"]["tok_s"])[0]
    for m in MODELS:
        p = per[m]
        if not p["bleu"]:
            continue
        tok = _stats(p["tok_s"])[0]
        never = sum(t is None for t in p["time_to"])
        lines.append(f"| {m} | {_pm(p['bleu'])} | {_pm(p['chrf'])} | {_pm(p['best_ppl'])} | "
                     f"{_pm(p['tok_s'], '.0f')} | "
                     f"{_pm([t for t in p['time_to'] if t is not None], '.0f')}"
                     f"{f' ({never} never reached)' if never else ''} | "
                     f"{_pm([s for s in p['speedup'] if s is not None], '.3f')}x | "
                     f"{_fmt(tok / base_tok if tok and base_tok else None, '.3f', 'x')} |")
    lines += ["", "Mean ± standard deviation over the seeds "
              + ", ".join(d.name for d in seed_dirs) + " (one report each, with its evidence, in "
              "those folders). The time-to-ppl target is each seed's own baseline's best valid ppl.",
              "", "![valid BLEU (greedy) against wall-clock time](bleu_time.png)"]
    points = {}
    for d, r in zip(seed_dirs, runs):
        for m, vb in (r.get("valid_bleu_greedy") or {}).items():
            wall = {int(s): w for s, w, _ in r["valid"].get(m, [])}
            points[f"{m} ({d.name})"] = [(wall.get(int(s)), b) for s, b in vb.items()]
    if points:
        plot_bleu_time(points, out / "bleu_time.png", f"{head['pair']} ({head['profile']})")
    summary = {"pair": head["pair"], "profile": head["profile"], "device": head["device"],
               "headline": metric, "seeds": [d.name for d in seed_dirs],
               "per_model": {m: {k: {"values": v, "mean": _stats(v)[0], "sd": _stats(v)[1]}
                                 for k, v in p.items()} for m, p in per.items() if p["bleu"]}}
    if budget_dir is not None and (budget_dir / "summary.json").exists():
        b = json.loads((budget_dir / "summary.json").read_text())
        summary["time_budget"] = {"dir": budget_dir.name, metric: b[metric],
                                  "translated_step": b["translated_step"], "wall_s": b["wall_s"]}
        lines += ["", f"## Same training time ({budget_dir.name})", "",
                  "| model | " + label + " | translated step | training wall (s) |",
                  "|---|---|---|---|"]
        for m in MODELS:
            if m in b[metric]:
                lines.append(f"| {m} | {_fmt(b[metric][m])} | {b['translated_step'][m]} | "
                             f"{_fmt(b['wall_s'][m], '.0f')} |")
        lines += ["", f"See {budget_dir.name}/report.md for the budget and its evidence."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onmt_sdrop.recipe.aggregate",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--budget", type=Path)
    ap.add_argument("seeds", nargs="+", type=Path)
    args = ap.parse_args(argv)
    have = [d for d in args.seeds if (d / "summary.json").exists()]
    if not have:
        print("aggregate: error: no summary.json in " + ", ".join(map(str, args.seeds)),
              file=sys.stderr)
        return 2
    aggregate(args.out, have, args.budget)
    print(f"wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
