"""``onmt-sdrop``: the OpenNMT-py entry points with the plugin, plus set-up helpers.

    onmt-sdrop train -config x.yaml -encoder_type sdrop_brnn -decoder_type sdrop_rnn
    onmt-sdrop translate|build_vocab|average_models ...   (same options as onmt_*)
    onmt-sdrop install-hook      make the stock onmt_* commands load the plugin
    onmt-sdrop info              what is installed and which backends can run here
"""
from __future__ import annotations

import importlib
import sys

from . import hook

# At import, not in main(): a DataLoader worker (-num_workers > 0) is a spawned interpreter that
# re-imports its parent's main module (this one) and then unpickles OpenNMT-py objects, so the
# guards must be in place by then, start-up hook or not (without them `import onmt` dies on
# `import spacy`; a GPU recipe run hung on that).
hook.install()

COMMANDS = {"train": "train", "translate": "translate", "build_vocab": "build_vocab",
            "build-vocab": "build_vocab", "average_models": "average_models",
            "average-models": "average_models"}


def _info() -> int:
    import torch

    from . import __version__
    from .ops import cupy_available
    import onmt

    ok, why = cupy_available()
    print(f"onmt_sdrop {__version__}, OpenNMT-py {onmt.__version__}, torch {torch.__version__}")
    print(f"start-up hook: {hook.pth_path()} ({'present' if _hook_present() else 'absent'})")
    print(f"backends: torch yes, cupy {'yes' if ok else 'no (' + why + ')'}")
    from .patches import CHECKPOINT_GLOBALS, TRUST_ENV, trusted

    allowed = ", ".join(f"{g.__module__}.{g.__qualname__}" for g in CHECKPOINT_GLOBALS)
    print("checkpoints: " + (f"trusted, loaded with weights_only=False ({TRUST_ENV} is set)"
                              if trusted() else
                              f"weights_only=True, allowlist {allowed} ({TRUST_ENV}=1 to trust)"))
    return 0


def _hook_present() -> bool:
    import os

    return os.path.exists(hook.pth_path())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "install-hook":
        print(f"wrote {hook.install_pth()}")
        return 0
    if cmd == "info":
        return _info()
    if cmd not in COMMANDS:
        print(f"onmt-sdrop: error: unknown command {cmd!r}; one of "
              f"{', '.join(sorted(set(COMMANDS.values())))}, install-hook, info", file=sys.stderr)
        return 2
    module = importlib.import_module(f"onmt.bin.{COMMANDS[cmd]}")
    sys.argv = [f"onmt-sdrop {cmd}"] + rest
    from .patches import run_cli

    return run_cli(module.main, f"onmt-sdrop {cmd}") or 0


if __name__ == "__main__":
    raise SystemExit(main())
