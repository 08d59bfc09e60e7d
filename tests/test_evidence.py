"""Every committed score can be checked: each results folder (recipes/results/*, demo/) either
carries its evidence (the detokenized test hypotheses, scores.json with the sacrebleu signatures
and the reference file's sha256, the train/translate logs), from which every BLEU and chrF is
recomputed here and must match, or says plainly in its report that no hypotheses stand behind its
numbers."""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p for p in (ROOT / "recipes" / "results").iterdir() if p.is_dir()) + [
    ROOT / "demo"]
NO_EVIDENCE = "No hypotheses behind these numbers"


def raw_dir(pair: str) -> Path:
    if pair == "sample-deen":
        return ROOT / "data" / "iwslt14-sample"
    env = os.environ.get(pair.upper().replace("-", "_") + "_RAW")
    return Path(env) if env else ROOT.parent / "shared" / "data" / pair


def read(path: Path) -> list[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def evidence_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("**/evidence/*/scores.json"))


def summary_for(scores_json: Path) -> dict:
    """The summary.json of the report that the evidence belongs to."""
    return json.loads((scores_json.parents[2] / "summary.json").read_text())


def without_version(sig: str) -> str:
    return re.sub(r"\|version:[^|]*", "", sig)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_has_evidence_or_says_it_has_none(folder):
    if not evidence_of(folder):
        assert NO_EVIDENCE in (folder / "report.md").read_text(), folder
    else:
        for scores_json in evidence_of(folder):
            ev = scores_json.parent
            assert (ev / "test.hyp.xz").exists() and (ev / "train.log.xz").exists()
            assert (ev / "translate.log.xz").exists()


CASES = [s for f in FOLDERS for s in evidence_of(f)]


@pytest.mark.parametrize("scores_json", CASES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_scores_are_recomputed_from_the_committed_hypotheses(scores_json):
    import sacrebleu

    scores = json.loads(scores_json.read_text())
    refs_info = scores["refs"]
    raw = raw_dir(refs_info["pair"])
    cands = [raw / refs_info["file"], raw / (refs_info["file"] + ".xz")]
    ref_file = next((c for c in cands if c.exists()), None)
    if ref_file is None:
        pytest.skip(f"references {cands[0]} (or .xz) not on this machine")
    refs = read(ref_file)[refs_info["first"]:refs_info["end"]]
    assert hashlib.sha256("".join(r + "\n" for r in refs).encode()).hexdigest() == \
        refs_info["sha256"]
    hyps = read(scores_json.parent / "test.hyp.xz")
    assert len(hyps) == len(refs) == refs_info["lines"]
    metrics = {"bleu": sacrebleu.metrics.BLEU(), "chrf": sacrebleu.metrics.CHRF()}
    if "bleu_tok" in scores:
        metrics["bleu_tok"] = sacrebleu.metrics.BLEU(tokenize="none")
    summary = summary_for(scores_json)
    model = re.sub(r"-seed\d+$", "", scores_json.parent.name)
    for key, metric in metrics.items():
        got = round(metric.corpus_score(hyps, [refs]).score, 2)
        assert got == scores[key], (key, got, scores[key])
        assert without_version(str(metric.get_signature())) == \
            without_version(scores[f"{key}_signature"])
        assert summary[key][model] == got, (key, model)


# ---------------------------------------------------------------- the documents point at it

LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    """The committed Markdown files: README, reports, the logs' READMEs."""
    return sorted(p for p in ROOT.rglob("*.md")   # not in hidden folders (.venv, caches)
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def heading_anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_a_document_resolves(doc):
    """A reported figure names its JSON, log or report by a link: the file must be there, and a
    link to a section of the same document must name one of its headings."""
    text = doc.read_text(encoding="utf-8")
    anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    missing = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path and not (doc.parent / path).exists():
            missing.append(target)
        elif not path and anchor not in anchors:
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to nothing: {missing}"
