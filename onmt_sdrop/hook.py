"""Start-up hook: applies the patches and registers the plugin whenever ``onmt`` is imported.

``onmt-sdrop install-hook`` writes ``onmt_sdrop.pth`` into site-packages; Python runs its one
line at start-up, which only installs the import finder below (no torch, no OpenNMT-py import),
so the stock ``onmt_*`` entry points know the plugin with no extra flag.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import sysconfig

PTH_NAME = "onmt_sdrop.pth"
PTH_LINE = "import onmt_sdrop.hook as _h; _h.install()\n"


def _after_onmt(module):
    from . import plugin  # noqa: F401  (registration runs at import)


def _after_bin(module):
    from .patches import wrap_entry_point

    wrap_entry_point(module)


def _transform_guard(name):
    def run(loader, module):
        from .patches import exec_transform_module

        exec_transform_module(loader, module, name)

    return run


# modules whose loading we wrap: name -> ("after", fn(module)) or ("instead", fn(loader, module))
WATCH = {
    "onmt": ("after", _after_onmt),
    **{f"onmt.bin.{b}": ("after", _after_bin)
       for b in ("train", "translate", "build_vocab", "average_models", "release_model")},
    **{f"onmt.transforms.{t}": ("instead", _transform_guard(t))
       for t in ("clean", "terminology", "inlinetags", "fuzzymatch", "normalize")},
}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, kind, fn):
        self.inner, self.kind, self.fn = inner, kind, fn

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        if self.kind == "instead":
            self.fn(self.inner, module)
        else:
            self.inner.exec_module(module)
            self.fn(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCH:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, *WATCH[fullname])
        return spec


def install() -> None:
    """Install the finder (idempotent). Modules already imported get their action now."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    for name, (kind, fn) in WATCH.items():
        if kind == "after" and name in sys.modules:
            fn(sys.modules[name])


def pth_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def install_pth() -> str:
    """Write the start-up ``.pth`` file into this interpreter's site-packages; returns its path."""
    path = pth_path()
    with open(path, "w") as fh:
        fh.write(PTH_LINE)
    return path
