"""What the pipeline can run: language pairs, profiles, and the two models compared."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SdropError

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
    tokenized_refs: bool        # Moses-tokenized references: the headline is tokenized BLEU
    source_note: str


@dataclass(frozen=True)
class Profile:
    """Model and training options. ``split_override``: split -> (stem or None for the pair's own
    stem, first line, end line or None). ``pairs``: the pairs it can serve (empty: all)."""

    name: str
    train_args: tuple
    train_steps: int
    valid_steps: int
    split_override: dict = field(default_factory=dict)
    spm_vocab: int | None = None
    pairs: tuple = ()
    valid_bleu: bool = False        # greedy valid BLEU at every checkpoint (BLEU-vs-time plot)
    valid_bleu_lines: int | None = None   # first lines of the valid set used for it (None: all)
    note: str = ""


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


def _with(args: tuple, opt: str, value: str) -> tuple:
    """``args`` with option ``opt`` set to ``value``."""
    return tuple(value if prev == opt else a for prev, a in zip(("",) + args, args))


# GPU profiles load batches without DataLoader workers too. On an H200 (bench/trainer_profile.py,
# bench/results/trainer-gpu-2026-11-27a.json) 2 workers made the launch-bound step slower, not
# faster: sdrop 116 ms/step against 71 ms with none, stock 64 ms against 48 (b.json); likely
# (not measured) their pin-memory thread competing with the trainer for the GIL.

_FULL = ("-layers", "2", "-hidden_size", "500", "-word_vec_size", "500", "-batch_size", "64",
         "-global_attention", "general", "-input_feed", "1")
_SMALL = ("-layers", "2", "-hidden_size", "256", "-word_vec_size", "256", "-batch_size", "64",
          "-optim", "adam", "-learning_rate", "0.001")
_ADAM = ("-optim", "adam", "-learning_rate", "0.001")

PROFILES = {
    # paper scale: OpenNMT-py defaults (2x500, SGD 1.0), to convergence on a GPU
    "full": Profile("full", _COMMON + _FULL + ("-optim", "sgd", "-learning_rate", "1.0",
                                                   "-start_decay_steps", "30000",
                                                   "-decay_steps", "5000"), 50000, 2500,
                    valid_bleu=True),
    # the full-size model for a fixed number of steps that fits a few minutes on one H100
    "gpu-short": Profile("gpu-short", _COMMON + _FULL + _ADAM, 3000, 500, valid_bleu=True),
    # recipes/gpu_check.sh: the full-size model on Multi30k, baseline and sdrop x 2 seeds inside
    # one 8-minute device call. Measured on an H200 at batch 64 (bench/results/trainer-gpu-*):
    # stock 48 ms/step, sdrop 71 ms eager and 27 ms with CUDA graphs; the GPU is launch-bound,
    # so 128 sentences a batch cost about what 64 do: 800 steps are 3.5 epochs of Multi30k
    "gpu-converge": Profile("gpu-converge", _with(_COMMON + _FULL, "-batch_size", "128")
                            + _ADAM, 800, 200, valid_bleu=True, valid_bleu_lines=500),
    # both models finish on a 2-core CPU in about 30 minutes each
    "cpu-small": Profile("cpu-small", _COMMON + _SMALL, 2500, 250),  # ~25 min per model here
    # IWSLT'14 De-En without its training set: train on the valid split, hold out its last 500
    "local-subset": Profile(
        "local-subset", _COMMON + _SMALL, 1500, 250,
        {"train": ("valid", 0, 6783), "valid": ("valid", 6783, None), "test": ("test", 0, None)},
        spm_vocab=6000, pairs=("iwslt14-deen",),
        note="trains on the first 6,783 lines of IWSLT'14's valid split (needs only valid/test)"),
    # `make demo`: a few minutes per model on the bundled sample
    "demo": Profile("demo", _COMMON + ("-layers", "2", "-hidden_size", "192", "-word_vec_size",
                                       "192", "-batch_size", "32", "-optim", "adam",
                                       "-learning_rate", "0.002", "-report_every", "25"),
                    400, 100, valid_bleu=True),
    # tests: seconds (the first lines of each split of any pair)
    "tiny": Profile("tiny", _COMMON + ("-layers", "1", "-hidden_size", "16", "-word_vec_size",
                                       "16", "-batch_size", "16", "-report_every", "5"), 10, 5,
                    {"train": (None, 0, 200), "valid": (None, 0, 40), "test": (None, 0, 8)},
                    spm_vocab=300),
}


def lookup(pair: str, profile: str) -> tuple[Pair, Profile]:
    """The pair and profile by name, or one line saying why they cannot run together."""
    if pair not in PAIRS:
        raise SdropError(f"unknown pair {pair!r}; one of {', '.join(PAIRS)}")
    if profile not in PROFILES:
        raise SdropError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    if prof.pairs and pair not in prof.pairs:
        raise SdropError(f"profile {profile!r} serves only {', '.join(prof.pairs)}"
                         + (f" ({prof.note})" if prof.note else "") + f", not {pair}")
    return PAIRS[pair], prof


def splits(pair: Pair, profile: Profile) -> dict:
    """split -> (raw file stem, first line, end line or None) for this pair and profile."""
    out = dict(pair.splits)
    for split, (stem, first, end) in profile.split_override.items():
        out[split] = (stem or pair.splits[split][0], first, end)
    return out


def parse_models(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        raise SdropError(f"--models: unknown model {', '.join(map(repr, bad)) or '(none)'}; "
                         f"a comma-separated subset of {', '.join(MODELS)}")
    return list(dict.fromkeys(names))
