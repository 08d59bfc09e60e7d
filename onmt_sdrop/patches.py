"""Patches that make OpenNMT-py 3.5.1 usable on current torch and a lean install, and safe.

Every replacement goes through :func:`wrap_once` (idempotent, functions and classmethods alike).
The OpenNMT-py / torch names replaced, here and in :mod:`onmt_sdrop.plugin` and
:mod:`onmt_sdrop.hook` (see README, "Patches to OpenNMT-py"):

* ``torch.load`` -- calls from ``onmt.*`` modules load with ``weights_only=True`` and an allowlist
  of the classes OpenNMT-py 3.5.1 checkpoints hold (:data:`CHECKPOINT_GLOBALS`); a file that needs
  more is refused in one line naming the class, unless ``ONMT_SDROP_TRUST_CHECKPOINTS=1``
  (:data:`TRUST_ENV`) is set. A missing, empty or damaged file, or a torch file that is not an
  OpenNMT-py checkpoint (read by :data:`CHECKPOINT_READERS`), is a one-line error too.
* ``onmt.utils.parse.DataOptsCheckerMixin._validate_file`` -- files that do not exist (and empty
  vocabularies) are one-line errors.
* ``onmt.utils.parse.DataOptsCheckerMixin._validate_data`` -- every corpus file exists, is not
  empty, is UTF-8 (file and line named otherwise), and both sides have the same number of lines.
* ``onmt.utils.parse.ArgumentParser.validate_train_opts``, ``.validate_model_opts``,
  ``.validate_translate_opts``, ``.validate_prepare_opts`` -- OpenNMT-py's own option assertions
  become one-line errors; plus checks stock lacks (layer counts, the dropout schedule's lengths,
  encoder/decoder pairs, ``-gpu_ranks`` on a machine without those GPUs).
* ``onmt.utils.parse.DataOptsCheckerMixin._validate_transforms_opts`` -- ``sentencepiece`` /
  ``bpe`` have their ``-src/tgt_subword_model`` files.
* ``onmt.utils.misc.check_path`` -- an existing output (``onmt_build_vocab``'s vocabularies)
  without ``-overwrite`` is a one-line error.
* ``onmt.bin.average_models.average_models`` -- checkpoints of different models are a one-line
  error.
* ``onmt.bin.train._get_parser`` -- a word ``onmt_train`` does not know, typed on the command
  line, is refused (stock drops it silently), with the nearest option named.
* ``onmt.bin.translate.translate`` -- ``-model`` files exist, ``-src``/``-tgt`` exist, are not
  empty and are UTF-8,
  ``-output``'s folder exists, ``-gpu`` exists, ``-beam_size`` >= 1.
* ``onmt.bin.{train,translate,build_vocab,average_models,release_model}.main`` -- an
  :class:`~onmt_sdrop.errors.SdropError` is one line on stderr and exit status 2 (hook.py).
* ``onmt.transforms.{clean,terminology,inlinetags,fuzzymatch,normalize}`` -- a module whose
  optional package is missing is replaced by a stand-in transform that names the package (hook.py).
* ``onmt.opts.model_opts``, ``onmt.opts.translate_opts``, ``onmt.model_builder.build_base_model``,
  ``onmt.model_builder.load_test_model``, ``onmt.train_single._get_model_opts``,
  ``onmt.train_single.build_model``
  (a resume past a ``-dropout_steps`` boundary starts at the schedule's rate for that step),
  ``ArgumentParser.ckpt_model_opts``, ``ArgumentParser.validate_model_opts`` (the ``-sdrop_*``
  options and checks), the encoder/decoder registries -- the plugin (plugin/__init__.py).
* ``onmt.train_single.build_dynamic_dataset_iter`` -- the validation iterator loads without
  DataLoader workers: with ``-num_workers`` > 0 OpenNMT-py 3.5.1 starts fresh ones (``spawn``)
  at every validation, seconds each (plugin/__init__.py).
* ``onmt.inputters.dynamic_iterator.tensorify`` -- a batch for a GPU is made on the CPU and moved
  in one pinned, non-blocking copy per tensor, not one synchronising copy per sentence
  (plugin/__init__.py).
* ``onmt.models.model.NMTModel.forward``, ``onmt.trainer.Trainer._gradient_accumulation`` -- with
  ``-sdrop_cuda_graphs`` on, a training step runs the captured encoder/decoder graphs, and each
  batch is padded to its shape bucket first (plugin/graphs.py).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import pickle
import re
import sys

import torch

from .errors import SdropError

# transform module -> (transform name, {missing import: pip package})
OPTIONAL_TRANSFORMS = {
    "clean": ("clean", {"fasttext": "fasttext-wheel", "regex": "regex"}),
    "terminology": ("terminology", {"spacy": "spacy", "ahocorasick": "pyahocorasick"}),
    "inlinetags": ("inlinetags", {"ahocorasick": "pyahocorasick"}),
    "fuzzymatch": ("fuzzymatch", {"rapidfuzz": "rapidfuzz", "numpy": "numpy"}),
    "normalize": ("normalize", {"regex": "regex"}),
}


# --------------------------------------------------------------------------- one way to patch

def wrap_once(owner, name, make) -> bool:
    """Replace ``owner.name`` by ``make(original)``, once per ``make``; True if it replaced.

    ``owner`` is a module or a class. For a classmethod or staticmethod (own or inherited),
    ``make`` receives the plain function and returns a plain function, which is stored back with
    the same decorator. A second call with the same ``make`` is a no-op; wrappers made by
    different ``make`` functions stack.
    """
    raw = inspect.getattr_static(owner, name)
    kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
    func = raw.__func__ if kind else raw
    key = f"{make.__module__}.{make.__qualname__}"
    done = getattr(func, "_sdrop_wraps", frozenset())
    if key in done:
        return False
    new = make(func)
    new._sdrop_wraps = done | {key}
    setattr(owner, name, kind(new) if kind else new)
    return True


def replaced(owner, name) -> frozenset:
    """Keys of the :func:`wrap_once` wrappers on ``owner.name`` (for tests and ``info``)."""
    raw = inspect.getattr_static(owner, name, None)
    if not (callable(raw) or isinstance(raw, (classmethod, staticmethod))):
        return frozenset()
    return getattr(getattr(raw, "__func__", raw), "_sdrop_wraps", frozenset())


# --------------------------------------------------------------------------- checkpoints

TRUST_ENV = "ONMT_SDROP_TRUST_CHECKPOINTS"
# Everything an OpenNMT-py 3.5.1 checkpoint (onmt_train, -train_from, onmt_average_models) holds
# beyond what torch's weights_only unpickler allows anyway (tensors, dicts, lists, sets, str, ...):
# the options are an argparse.Namespace; vocabularies and optimizer states are plain dicts/lists.
CHECKPOINT_GLOBALS = [argparse.Namespace]


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _unsafe_global(exc) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if m:
        return m.group(1).rstrip(".,")
    m = re.search(r"Trying to load unsupported GLOBAL (\S+)|GLOBAL (\S+) was not an allowed",
                  str(exc))
    return (m.group(1) or m.group(2)) if m else None


def safe_load(path, load=torch.load, **kwargs):
    """``torch.load(path, weights_only=True)`` with :data:`CHECKPOINT_GLOBALS`; one-line errors."""
    where = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            raise SdropError(f"checkpoint not found: {where}")
        if os.path.isdir(path):
            raise SdropError(f"checkpoint is a directory, not a file: {where}")
        if os.path.getsize(path) == 0:
            raise SdropError(f"checkpoint is empty (0 bytes): {where}")
    weights_only = kwargs.pop("weights_only", None)
    if weights_only is None:
        weights_only = not trusted()
    try:
        if not weights_only:
            return load(path, weights_only=False, **kwargs)
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            return load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        name = _unsafe_global(exc)
        if name is None:
            raise SdropError(f"checkpoint {where} is damaged or truncated, or not a checkpoint "
                             f"(it does not unpickle)") from None
        raise SdropError(f"checkpoint {where} needs the global {name}, which is not on the "
                         f"allowlist of what OpenNMT-py checkpoints hold; refused, since loading "
                         f"it could run code. "
                         f"If you trust the file, set {TRUST_ENV}=1") from None
    except OSError as exc:
        raise SdropError(f"cannot read checkpoint {where}: {exc.strerror or exc}") from None
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError) as exc:
        detail = str(exc).splitlines()[0][:80] if str(exc) else ""
        raise SdropError(f"checkpoint {where} is damaged or truncated, or not a checkpoint "
                         f"({type(exc).__name__}: {detail})") from None


# OpenNMT-py modules whose torch.load reads a model checkpoint: the keys they go on to read
CHECKPOINT_READERS = {"onmt.models.model_saver": ("opt",),
                      "onmt.bin.average_models": ("model", "generator", "vocab", "opt"),
                      "onmt.bin.release_model": ("opt",)}


def check_checkpoint(ckpt, where, keys=("opt",)):
    """``ckpt`` is a dict with ``keys``: an OpenNMT-py checkpoint, not some other torch file."""
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = f"a dict without {', '.join(repr(k) for k in missing)}" if isinstance(ckpt, dict) \
            else f"a {type(ckpt).__name__}"
        raise SdropError(f"{where} is not an OpenNMT-py checkpoint (it holds {what})")
    return ckpt


def _make_torch_load(original):
    @functools.wraps(original)
    def load(f, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not (caller == "onmt" or caller.startswith("onmt.")) or args:
            return original(f, *args, **kwargs)
        obj = safe_load(f, load=original, **kwargs)
        if caller in CHECKPOINT_READERS:
            check_checkpoint(obj, f, CHECKPOINT_READERS[caller])
        return obj

    load._sdrop_original = original
    return load


def patch_torch_load() -> None:
    wrap_once(torch, "load", _make_torch_load)


# --------------------------------------------------------------------------- optional transforms

def exec_transform_module(loader, module, name: str) -> None:
    """Load ``onmt.transforms.<name>``; if an optional package is missing, register a stand-in."""
    transform, packages = OPTIONAL_TRANSFORMS[name]
    try:
        loader.exec_module(module)
        return
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in packages:
            raise
        missing = packages[top]
    from onmt.transforms import register_transform
    from onmt.transforms.transform import Transform

    message = (f"the '{transform}' transform needs the package '{missing}', which is not installed: "
               f"pip install {missing}")

    class MissingTransform(Transform):
        """Stand-in for a transform whose optional dependency is not installed."""

        @classmethod
        def _validate_options(cls, opts):
            raise SdropError(message)

        def __init__(self, opts):
            raise SdropError(message)

    MissingTransform.__name__ = f"Missing_{transform}"
    register_transform(name=transform)(MissingTransform)
    module.MISSING_PACKAGE = missing


# --------------------------------------------------------------------------- corpora

def scan_text_file(path, label: str) -> int:
    """Number of lines of a text input; refuses a missing, empty or non-UTF-8 file. ``label``
    starts the message: ``corpus 'name'`` or the option, e.g. ``-src``."""
    try:
        with open(path, "rb") as fh:
            n = 0
            for n, line in enumerate(fh, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SdropError(f"{label}: {path} line {n} is not UTF-8 (byte "
                                     f"{line[exc.start]:#04x} at column {exc.start + 1})"
                                     ) from None
    except FileNotFoundError:
        raise SdropError(f"{label}: file not found: {path}") from None
    except IsADirectoryError:
        raise SdropError(f"{label}: is a directory, not a file: {path}") from None
    if n == 0:
        raise SdropError(f"{label}: file is empty: {path}")
    return n


def check_corpora(opt) -> None:
    """Every corpus of ``opt.data`` names files that exist, hold UTF-8 text, and pair up."""
    corpora = getattr(opt, "data", None) or {}
    if isinstance(corpora, str):  # still the YAML text before OpenNMT-py's own check
        import yaml

        corpora = yaml.safe_load(corpora) or {}
    for cname, corpus in corpora.items():
        sides = [corpus.get(k) for k in ("path_src", "path_tgt") if corpus.get(k)]
        counts = [scan_text_file(path, f"corpus '{cname}'") for path in sides]
        if len(counts) == 2 and counts[0] != counts[1]:
            raise SdropError(f"corpus '{cname}': {sides[0]} has {counts[0]} lines but "
                             f"{sides[1]} has {counts[1]}; source and target must pair up")


def _validate_file(file_path, info):
    if not os.path.isfile(file_path):
        raise SdropError(f"{info} file not found: {file_path}")
    if info.endswith("vocab") and os.path.getsize(file_path) == 0:
        raise SdropError(f"{info} file is empty: {file_path}")


def _make_validate_file(original):
    return _validate_file


def _make_validate_data(inner):
    def _validate_data(cls, opt):
        check_corpora(opt)
        return inner(cls, opt)

    return _validate_data


def patch_data_check() -> None:
    from onmt.utils.parse import DataOptsCheckerMixin

    wrap_once(DataOptsCheckerMixin, "_validate_file", _make_validate_file)
    wrap_once(DataOptsCheckerMixin, "_validate_data", _make_validate_data)


# --------------------------------------------------------------------------- option checks

def _plain(exc) -> str:
    text = " ".join(str(exc).split())
    return text or "an option check of OpenNMT-py failed"


def _one_line_assertions(inner):
    """OpenNMT-py checks options with ``assert``: its message becomes a one-line error."""
    def check(cls, opt, *args, **kwargs):
        try:
            return inner(cls, opt, *args, **kwargs)
        except AssertionError as exc:
            raise SdropError(_plain(exc)) from None

    return check


def check_train_opts(opt) -> None:
    """What stock ``validate_train_opts`` misses or words badly."""
    drop = list(getattr(opt, "dropout", []) or [])
    attn = list(getattr(opt, "attention_dropout", []) or [])
    steps = list(getattr(opt, "dropout_steps", []) or [])
    if len(drop) != len(steps) or len(attn) != len(steps):
        raise SdropError(f"-dropout has {len(drop)} value(s), -attention_dropout {len(attn)} and "
                         f"-dropout_steps {len(steps)}: give one of each per schedule step")
    ranks = list(getattr(opt, "gpu_ranks", []) or [])
    if ranks:
        _check_gpus(f"-gpu_ranks {' '.join(map(str, ranks))} asks for {len(ranks)} GPU(s) "
                    f"on this machine", len(ranks))


def check_model_opts(opt) -> None:
    """Layer counts every model needs (stock accepts 0 and fails later)."""
    for name in ("enc_layers", "dec_layers"):
        n = getattr(opt, name, 1)
        if isinstance(n, int) and n < 1:
            raise SdropError(f"-{name} must be at least 1, got {n}")


def _check_gpus(asked: str, needed: int) -> None:
    """``needed`` local GPUs exist (``asked`` says which option asked for them)."""
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if needed > have:
        seen = f"only {have} GPU(s) visible to torch" if have else \
            f"no GPU visible to torch {torch.__version__}"
        raise SdropError(f"{asked}, but there is {seen}; leave it out to run on the CPU")


def check_translate_opts(opt) -> None:
    """``-src`` (and ``-tgt``) exist, are not empty, are UTF-8; ``-output`` can be written;
    ``-gpu`` exists; ``-beam_size`` >= 1."""
    if getattr(opt, "beam_size", 1) < 1:
        raise SdropError(f"-beam_size must be at least 1, got {opt.beam_size}")
    if getattr(opt, "gpu", -1) >= 0:
        _check_gpus(f"-gpu {opt.gpu} asks for GPU {opt.gpu}", opt.gpu + 1)
    for flag in ("src", "tgt"):
        if getattr(opt, flag, None):
            scan_text_file(getattr(opt, flag), f"-{flag}")
    out = getattr(opt, "output", None)
    if out:
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise SdropError(f"-output folder does not exist: {folder}")
    for model in getattr(opt, "models", None) or []:
        if not os.path.exists(model):
            raise SdropError(f"checkpoint not found: {model}")


def _make_checked(check):
    def make(inner):
        inner = _one_line_assertions(inner)

        def validate(cls, opt, *args, **kwargs):
            check(opt)
            return inner(cls, opt, *args, **kwargs)

        return validate

    make.__qualname__ = f"checked_{check.__name__}"
    return make


SUBWORD_TRANSFORMS = ("sentencepiece", "bpe")


def check_transform_opts(opt) -> None:
    """A subword transform has its model files (stock fails when it first loads them)."""
    chosen = [t for t in SUBWORD_TRANSFORMS if t in (getattr(opt, "_all_transform", None) or ())]
    for name in chosen:
        sides = ["src"] if getattr(opt, "share_vocab", False) else ["src", "tgt"]
        for side in sides:
            path = getattr(opt, f"{side}_subword_model", None)
            if not path:
                raise SdropError(f"-transforms {name} needs -{side}_subword_model (its model file)")
            if not os.path.isfile(path):
                raise SdropError(f"-{side}_subword_model file not found: {path}")


def _make_checked_path(original):
    def check_path(path, exist_ok=False, log=print):
        if os.path.exists(path) and not exist_ok:
            raise SdropError(f"{path} exists; add -overwrite to replace it")
        return original(path, exist_ok=exist_ok, log=log)

    return check_path


def patch_option_checks() -> None:
    import onmt.utils.misc
    from onmt.utils.parse import ArgumentParser, DataOptsCheckerMixin

    wrap_once(onmt.utils.misc, "check_path", _make_checked_path)
    wrap_once(DataOptsCheckerMixin, "_validate_transforms_opts",
              _make_checked(check_transform_opts))

    wrap_once(ArgumentParser, "validate_train_opts", _make_checked(check_train_opts))
    wrap_once(ArgumentParser, "validate_model_opts", _make_checked(check_model_opts))
    wrap_once(ArgumentParser, "validate_translate_opts", _one_line_assertions)
    wrap_once(ArgumentParser, "validate_prepare_opts", _one_line_assertions)


# --------------------------------------------------------------------------- entry points

def run_cli(fn, prog: str, *args, **kwargs):
    """Call an entry point; an :class:`SdropError` becomes one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except SdropError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def wrap_entry_point(module) -> None:
    """Wrap ``module.main`` (an ``onmt.bin.*`` module) with :func:`run_cli`."""
    prog = "onmt_" + module.__name__.rsplit(".", 1)[-1]

    def make_main(main):
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            return run_cli(main, prog, *args, **kwargs)

        return wrapped

    wrap_once(module, "main", make_main)
    if module.__name__ == "onmt.bin.average_models":
        wrap_once(module, "average_models", _make_average)
    if module.__name__ == "onmt.bin.train":
        wrap_once(module, "_get_parser", _make_train_parser)
    if module.__name__ == "onmt.bin.translate":  # not in validate_translate_opts: training's
        wrap_once(module, "translate", _make_translate)  # scorer validates "-src dummy" there


def _make_train_parser(get_parser):
    """``onmt_train`` parses with ``parse_known_args`` and silently drops what it does not know
    (a misspelt ``-override_opts`` for ``--override_opts``): refuse such words given on the
    command line (unknown keys of a shared YAML config stay allowed, as stock)."""
    def _get_parser(*args, **kwargs):
        parser = get_parser(*args, **kwargs)
        parse = parser.parse_known_args

        def parse_known_args(args=None, namespace=None):
            opt, unknown = parse(args, namespace)
            given = sys.argv[1:] if args is None else list(args)
            typed = [u for u in unknown if u in given and u.startswith("-")
                     and not re.fullmatch(r"-[\d.]+(e-?\d+)?", u)]
            if typed:
                import difflib

                known = [s for a in parser._actions for s in a.option_strings]
                hints = [f"{u} (did you mean {m[0]}?)" if m else u for u in typed
                         for m in [difflib.get_close_matches(u, known, n=1, cutoff=0.75)]]
                raise SdropError(f"unrecognized arguments: {', '.join(hints)}")
            return opt, unknown

        parser.parse_known_args = parse_known_args
        return parser

    return _get_parser


def _make_average(average_models):
    """Stock ``average_models`` with the check it lacks: every checkpoint has the same parameters
    with the same shapes (stock broadcasts a smaller tensor silently, or fails on a missing key)."""
    @functools.wraps(average_models)
    def checked(model_files, fp32=False):
        first = None
        for path in model_files:
            m = check_checkpoint(safe_load(path, map_location="cpu"), path,
                                 CHECKPOINT_READERS["onmt.bin.average_models"])
            shapes = {part: {k: tuple(v.shape) for k, v in m[part].items()}
                      for part in ("model", "generator")}
            if first is None:
                first, first_shapes = path, shapes
            elif shapes != first_shapes:
                diff = _shape_difference(first_shapes, shapes)
                raise SdropError(f"{first} and {path} are not checkpoints of the same model "
                                 f"(their parameters differ: {diff})")
            del m
        return average_models(model_files, fp32)

    return checked


def _shape_difference(a, b) -> str:
    for part in a:
        for k in sorted(set(a[part]) | set(b[part])):
            if a[part].get(k) != b[part].get(k):
                return f"{part} {k}: {a[part].get(k, 'absent')} vs {b[part].get(k, 'absent')}"
    return "?"


def _make_translate(translate):
    @functools.wraps(translate)
    def checked(opt, *args, **kwargs):
        check_translate_opts(opt)
        return translate(opt, *args, **kwargs)

    return checked


def apply() -> None:
    """Apply every patch that does not wait for a module import (idempotent)."""
    patch_torch_load()
    patch_data_check()
    patch_option_checks()
