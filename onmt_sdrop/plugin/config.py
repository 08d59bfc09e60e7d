"""The ``-sdrop_*`` options: definition, validation and the per-model settings they give."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SdropError
from ..masks import COUNTS, PATTERNS
from ..ops import BACKENDS, check_backend, get_ops

SDROP_PARTS = {"encoder_type": ("sdrop_rnn", "sdrop_brnn"), "decoder_type": ("sdrop_rnn",)}


def add_sdrop_opts(parser) -> None:
    group = parser.add_argument_group(
        "Structured dropout (onmt_sdrop)",
        "Used by -encoder_type sdrop_rnn|sdrop_brnn and -decoder_type sdrop_rnn. "
        "The rate is -dropout (and its -dropout_steps schedule).")
    group.add("--sdrop_pattern", "-sdrop_pattern", type=str, default="step", choices=PATTERNS,
              help="How dropout masks vary: 'step' = same units for the whole batch, new units "
                   "every time step (Sarma et al. 2021, skips the dropped GEMM work); 'fixed' = "
                   "same units for every step; 'sample' = per sample, same over time "
                   "(variational); 'element' = stock nn.Dropout.")
    group.add("--sdrop_count", "-sdrop_count", type=str, default="fixed", choices=COUNTS,
              help="Units kept per step: 'fixed' = exactly H - round(p*H) (static shapes); "
                   "'bernoulli' = Binomial(H, 1-p) per step.")
    group.add("--sdrop_step_masks", "-sdrop_step_masks", type=int, default=0,
              help="For -sdrop_pattern step: draw this many masks per batch and give each time "
                   "step one of them at random (each step's mask is still uniformly random); "
                   "0 = a fresh mask at every step. A few masks let the torch backend stack the "
                   "steps that share one into a single GEMM, which is what saves time on a CPU.")
    group.add("--sdrop_backend", "-sdrop_backend", type=str, default="auto", choices=BACKENDS,
              help="Kernels for step/fixed dropout: 'torch' = compacted GEMMs in PyTorch, 'cupy' "
                   "= CUDA kernels (needs a GPU and CuPy), 'auto' = cupy on a GPU when available "
                   "else torch, 'dense' = masked dense reference (no work skipped).")


def uses_sdrop(opt) -> bool:
    return any(getattr(opt, k, None) in v for k, v in SDROP_PARTS.items())


def validate_sdrop_opts(opt) -> None:
    """Refuse options the structured-dropout parts cannot honour, in one line each."""
    if not uses_sdrop(opt):
        return
    rates = opt.dropout if isinstance(opt.dropout, (list, tuple)) else [opt.dropout]
    for p in rates:
        if not 0.0 <= float(p) < 1.0:
            raise SdropError(f"-dropout must be in [0, 1), got {p}")
    if opt.rnn_type != "LSTM":
        raise SdropError(f"the sdrop encoder/decoder support -rnn_type LSTM only, got {opt.rnn_type}")
    pattern = getattr(opt, "sdrop_pattern", "step")
    if pattern not in PATTERNS:
        raise SdropError(f"-sdrop_pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    count = getattr(opt, "sdrop_count", "fixed")
    if count not in COUNTS:
        raise SdropError(f"-sdrop_count must be one of {', '.join(COUNTS)}, got {count!r}")
    masks = getattr(opt, "sdrop_step_masks", 0)
    if masks < 0:
        raise SdropError(f"-sdrop_step_masks must be >= 0, got {masks}")
    check_backend(getattr(opt, "sdrop_backend", "auto"))


@dataclass
class SdropConfig:
    """What a structured-dropout module needs to know; read from the (checkpoint) options."""

    pattern: str = "step"
    count: str = "fixed"
    backend: str = "auto"
    step_masks: int = 0

    @classmethod
    def from_opt(cls, opt) -> "SdropConfig":
        # checkpoints of older versions may lack the options: fall back to the defaults
        return cls(getattr(opt, "sdrop_pattern", "step"), getattr(opt, "sdrop_count", "fixed"),
                   getattr(opt, "sdrop_backend", "auto"), getattr(opt, "sdrop_step_masks", 0))

    @property
    def mode(self) -> str:
        return "dense" if self.backend == "dense" else "compact"

    def ops(self, device):
        return get_ops(self.backend, device)


def dropout_rate(opt) -> float:
    return opt.dropout[0] if isinstance(opt.dropout, (list, tuple)) else opt.dropout
