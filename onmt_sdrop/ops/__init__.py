"""Compacted tensor ops behind one interface, with a pure-torch and a CUDA (CuPy) backend.

Knows neither OpenNMT-py nor the LSTM modules. Each backend is a module exporting
:data:`INTERFACE`: the six grouped GEMMs named as in ``kernels/grouped_gemm.cu``'s table, the two
autograd ops built on them, and the LSTM recurrence (contracts in
:mod:`onmt_sdrop.ops.torch_backend`). What every backend shares (the compact layout's gather and
scatter, the windowed weight, the autograd Functions) is :mod:`.common`; :mod:`.reference` holds
the dense masked reference every backend is tested against.
"""
from __future__ import annotations

import importlib

from ..errors import SdropError

BACKENDS = ("auto", "torch", "cupy")

INTERFACE = ("gather", "scatter", "permute_weight",
             "consumer_fwd", "consumer_dx", "consumer_dw",
             "producer_fwd", "producer_dx", "producer_dw",
             "compact_matmul", "matmul_compact", "lstm_sequence", "lstm_cell")

# "auto" picks the CUDA kernels on a GPU: tests/test_cuda.py passed on an H200 (2026-11-27, issue
# 9: all 9 GPU tests once the torch backend's device bug was fixed; compute-sanitizer memcheck
# clean). Set to False to make "auto" fall back to the torch backend.
CUDA_BACKEND_VALIDATED = True


def cupy_available() -> tuple[bool, str]:
    """(True, "") when the CUDA backend can run here, else (False, the reason)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device is visible to torch"
        importlib.import_module("cupy")
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return False, f"CuPy is not installed ({exc.name}); pip install 'onmt_sdrop[cuda12]' or '[cuda13]'"
    return True, ""


def check_backend(name: str) -> None:
    """Refuse a backend that cannot run on this machine, with the reason."""
    if name not in BACKENDS:
        raise SdropError(f"-sdrop_backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "cupy":
        ok, why = cupy_available()
        if not ok:
            raise SdropError(f"-sdrop_backend cupy needs a GPU and CuPy: {why}")


def get_ops(name: str, device):
    """The ops module for backend ``name`` ("auto", "torch" or "cupy") on ``device``."""
    check_backend(name)
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    auto_cuda = name == "auto" and on_gpu and CUDA_BACKEND_VALIDATED and cupy_available()[0]
    if name == "cupy" or auto_cuda:
        if not on_gpu:
            raise SdropError("-sdrop_backend cupy needs the model on a GPU (set -gpu_ranks)")
        return importlib.import_module(".cupy_backend", __name__)
    return importlib.import_module(".torch_backend", __name__)
