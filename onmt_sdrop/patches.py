"""Patches that make OpenNMT-py 3.5.1 usable on current torch and a lean install.

Each patch is applied here and only here (see README, "Patches to OpenNMT-py"):

1. ``torch.load`` from OpenNMT-py code loads full checkpoints (``weights_only=False``): since torch
   2.6 the default ``weights_only=True`` rejects the ``argparse.Namespace`` and vocabularies that
   OpenNMT-py checkpoints hold. Only calls made by ``onmt.*`` modules are changed.
2. Optional transforms: ``onmt/transforms/__init__.py`` imports every transform module at import
   time, so a missing spacy / fasttext / pyahocorasick / rapidfuzz / regex breaks ``import onmt``.
   Such a module is replaced by a stand-in transform that names the package to install when used.
3. Entry points (``onmt_train``, ``onmt_translate``, ``onmt_build_vocab``,
   ``onmt_average_models``): an :class:`~onmt_sdrop.errors.SdropError` (bad option, missing or
   unpaired corpus, unavailable backend) is printed as one line with exit status 2, not a traceback.
4. Corpus check before training / vocabulary building: every ``path_src``/``path_tgt`` exists and
   both sides have the same number of lines.
"""
from __future__ import annotations

import functools
import os
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

_torch_load = torch.load


@functools.wraps(_torch_load)
def _onmt_torch_load(*args, **kwargs):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith("onmt.") and "weights_only" not in kwargs:
        kwargs["weights_only"] = False  # OpenNMT-py checkpoints are pickles of trusted local runs
    return _torch_load(*args, **kwargs)


def patch_torch_load() -> None:
    torch.load = _onmt_torch_load


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


def check_corpora(opt) -> None:
    """Every corpus of ``opt.data`` names files that exist and pair up line by line."""
    corpora = getattr(opt, "data", None) or {}
    if isinstance(corpora, str):  # still the YAML text before OpenNMT-py's own check
        import yaml

        corpora = yaml.safe_load(corpora) or {}
    for cname, corpus in corpora.items():
        sides = [corpus.get(k) for k in ("path_src", "path_tgt") if corpus.get(k)]
        counts = []
        for path in sides:
            try:
                with open(path, "rb") as fh:
                    counts.append(sum(1 for _ in fh))
            except FileNotFoundError:
                raise SdropError(f"corpus '{cname}': file not found: {path}") from None
            except IsADirectoryError:
                raise SdropError(f"corpus '{cname}': is a directory, not a file: {path}") from None
        if len(counts) == 2 and counts[0] != counts[1]:
            raise SdropError(f"corpus '{cname}': {sides[0]} has {counts[0]} lines but "
                             f"{sides[1]} has {counts[1]}; source and target must pair up")


def _validate_file(file_path, info):
    if not os.path.isfile(file_path):
        raise SdropError(f"{info} file not found: {file_path}")


def patch_data_check() -> None:
    from onmt.utils.parse import DataOptsCheckerMixin

    DataOptsCheckerMixin._validate_file = staticmethod(_validate_file)

    inner = DataOptsCheckerMixin._validate_data.__func__
    if getattr(inner, "_sdrop", False):
        return

    def _validate_data(cls, opt):
        check_corpora(opt)
        return inner(cls, opt)

    _validate_data._sdrop = True
    DataOptsCheckerMixin._validate_data = classmethod(_validate_data)


def run_cli(fn, prog: str, *args, **kwargs):
    """Call an entry point; an :class:`SdropError` becomes one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except SdropError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def wrap_entry_point(module) -> None:
    """Wrap ``module.main`` (an ``onmt.bin.*`` module) with :func:`run_cli`."""
    main = module.main
    if getattr(main, "_sdrop", False):
        return
    prog = "onmt_" + module.__name__.rsplit(".", 1)[-1]

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        return run_cli(main, prog, *args, **kwargs)

    wrapped._sdrop = True
    module.main = wrapped


def apply() -> None:
    """Apply every patch that does not wait for a module import (idempotent)."""
    patch_torch_load()
    patch_data_check()
