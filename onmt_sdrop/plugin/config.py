"""The ``-sdrop_*`` options: definition, validation and the per-model settings they give."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SdropError
from ..masks import COMPACT_PATTERNS, COUNTS, PATTERNS, kept_count
from ..ops import BACKENDS, check_backend, get_ops

# -sdrop_backend: a kernel backend of onmt_sdrop.ops, or "dense", which is a mode (the masked
# dense reference, no work skipped) that runs on the torch backend; SdropConfig splits the two
BACKEND_CHOICES = BACKENDS + ("dense",)

SDROP_PARTS = {"encoder_type": ("sdrop_rnn", "sdrop_brnn"), "decoder_type": ("sdrop_rnn",)}
# encoders whose final state an (sdrop) RNN decoder can start from: LSTM (h, c) per layer
RNN_STATE_ENCODERS = ("rnn", "brnn", "sdrop_rnn", "sdrop_brnn", "mean")
# decoders that run after an (sdrop) RNN encoder (the cnn decoder wants a cnn encoder's output)
RNN_ENCODER_DECODERS = ("rnn", "ifrnn", "sdrop_rnn", "transformer")


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
    group.add("--sdrop_window_align", "-sdrop_window_align", type=int, default=1,
              help="For -sdrop_pattern step/fixed: start every step's window of kept units at a "
                   "multiple of this many units and pad the compact width to one (the dropout "
                   "rate is unchanged). 8 makes every compacted fp16/bf16 matrix 16-byte aligned, "
                   "which cuBLAS's tensor-core kernels need (SDROP_GEMM_KERNEL=cublas on a GPU); "
                   "1 = windows start anywhere. It changes how the kept sets of two steps "
                   "overlap, not which units a step keeps (README \"Aligned windows\").")
    group.add("--sdrop_cuda_graphs", "-sdrop_cuda_graphs", type=int, default=-1,
              choices=[-1, 0, 1],
              help="CUDA graphs of the sdrop encoder+decoder, forward and backward, per shape "
                   "bucket: 1 = on, 0 = off, -1 = on once validated on a GPU (see the README); "
                   "what cannot be captured runs eagerly, with one info line.")
    group.add("--sdrop_backend", "-sdrop_backend", type=str, default="auto",
              choices=BACKEND_CHOICES,
              help="Kernels for step/fixed dropout, a run-time choice (a checkpoint's value is "
                   "not used): 'auto' = the CUDA kernels when the model is on a GPU and CuPy is "
                   "installed, else 'torch'; 'torch' = compacted GEMMs in PyTorch (any device); "
                   "'cupy' = the CUDA kernels (needs a GPU and CuPy); 'dense' = the masked dense "
                   "reference on the torch backend (same masks, no work skipped).")


def uses_sdrop(opt) -> bool:
    return any(getattr(opt, k, None) in v for k, v in SDROP_PARTS.items())


def validate_sdrop_opts(opt, *, training: bool = True) -> None:
    """Refuse options the structured-dropout parts cannot honour, in one line each.
    ``training=False`` (a checkpoint's options read for translation, where nothing is dropped)
    skips the kept-count check."""
    if not uses_sdrop(opt):
        return
    rates = opt.dropout if isinstance(opt.dropout, (list, tuple)) else [opt.dropout]
    for p in rates:
        if not 0.0 <= float(p) < 1.0:
            raise SdropError(f"-dropout must be in [0, 1), got {p}")
    if opt.rnn_type != "LSTM":
        raise SdropError(f"the sdrop encoder/decoder support -rnn_type LSTM only, got {opt.rnn_type}")
    config = SdropConfig.from_opt(opt)   # pattern, count, step masks, backend and mode
    check_sdrop_model(opt)
    if training and config.pattern in COMPACT_PATTERNS and config.count == "fixed":
        check_kept_counts(opt, rates)
    if training and config.pattern == "step":
        check_window_align(opt, config.window_align)


def check_sdrop_model(opt) -> None:
    """The encoder/decoder pair and decoder options the sdrop parts can run (layer counts:
    :func:`onmt_sdrop.patches.check_model_opts`, for every model)."""
    enc, dec = getattr(opt, "encoder_type", "rnn"), getattr(opt, "decoder_type", "rnn")
    if dec in SDROP_PARTS["decoder_type"] and enc not in RNN_STATE_ENCODERS:
        raise SdropError(f"-decoder_type {dec} starts from an RNN encoder's final state; "
                         f"-encoder_type {enc} has none "
                         f"(use one of {', '.join(RNN_STATE_ENCODERS)})")
    if enc in SDROP_PARTS["encoder_type"] and dec not in RNN_ENCODER_DECODERS:
        raise SdropError(f"-encoder_type {enc} does not work with -decoder_type {dec} "
                         f"(use one of {', '.join(RNN_ENCODER_DECODERS)})")
    if dec in SDROP_PARTS["decoder_type"] and not getattr(opt, "input_feed", 1):
        used = [f"-{k}" for k in ("copy_attn", "coverage_attn") if getattr(opt, k, False)]
        if used:
            raise SdropError(f"-input_feed 0 supports neither -copy_attn nor -coverage_attn "
                             f"(as in stock OpenNMT-py); given {' and '.join(used)}")


def dropout_sites(opt) -> list[tuple[str, int]]:
    """(what, width) of every structured-dropout site the sdrop parts of ``opt`` have."""
    sites = []
    if getattr(opt, "encoder_type", None) in SDROP_PARTS["encoder_type"]:
        sites.append(("-src_word_vec_size", opt.src_word_vec_size))
        if opt.enc_layers > 1:  # a bidirectional layer's input is both directions: enc_hid_size
            sites.append(("-enc_hid_size", opt.enc_hid_size))
    if getattr(opt, "decoder_type", None) in SDROP_PARTS["decoder_type"]:
        sites.append(("-tgt_word_vec_size", opt.tgt_word_vec_size))
        sites.append(("-dec_hid_size", opt.dec_hid_size))
    return sites


def check_kept_counts(opt, rates) -> None:
    """Refuse a fixed kept count ``H - round(p*H)`` of 0 (every unit dropped at every step) or of
    ``H`` with ``p > 0`` (nothing ever dropped): either would silently not be dropout at ``p``."""
    for p in map(float, rates):
        if p == 0.0:
            continue
        for what, h in dropout_sites(opt):
            k = kept_count(h, p)
            if k == 0:
                why = "every unit would be dropped at every step; lower -dropout or widen it"
            elif k == h:
                why = ("nothing would ever be dropped; widen it, raise -dropout, or use "
                       "-sdrop_count bernoulli")
            else:
                continue
            raise SdropError(f"-dropout {p:g} on a {h}-wide dropout site ({what}) keeps "
                             f"H - round(p*H) = {h} - {h - k} = {k} of {h} units per step: {why}")


def check_window_align(opt, align: int) -> None:
    """Refuse an alignment that leaves a site one window position (``align >= H``): every step
    of a batch would keep the same units, the ``fixed`` pattern under the ``step`` pattern's
    name."""
    for what, h in dropout_sites(opt):
        if align >= h:
            hint = " (8 for cuBLAS's fp16)" if h > 8 else ""
            raise SdropError(f"-sdrop_window_align {align} leaves a {h}-wide dropout site ({what}) "
                             f"one window position: every step would keep the same units; use "
                             f"an alignment below {h}{hint}, or say -sdrop_pattern fixed")


@dataclass
class SdropConfig:
    """What a structured-dropout module needs to know, validated once.

    ``backend`` is the ``-sdrop_backend`` value; it splits into ``mode`` ("compact": skip the
    dropped work; "dense": the masked reference) and ``kernels`` (the ops backend that runs it)."""

    pattern: str = "step"
    count: str = "fixed"
    backend: str = "auto"
    step_masks: int = 0
    window_align: int = 1

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise SdropError(f"-sdrop_pattern must be one of {', '.join(PATTERNS)}, "
                             f"got {self.pattern!r}")
        if self.count not in COUNTS:
            raise SdropError(f"-sdrop_count must be one of {', '.join(COUNTS)}, got {self.count!r}")
        if self.step_masks < 0:
            raise SdropError(f"-sdrop_step_masks must be >= 0, got {self.step_masks}")
        if self.window_align < 1:
            raise SdropError(f"-sdrop_window_align must be >= 1, got {self.window_align}")
        if self.backend not in BACKEND_CHOICES:
            raise SdropError(f"-sdrop_backend must be one of {', '.join(BACKEND_CHOICES)}, "
                             f"got {self.backend!r}")
        check_backend(self.kernels)

    @classmethod
    def from_opt(cls, opt) -> "SdropConfig":
        # checkpoints of older versions may lack the options: fall back to the defaults
        return cls(getattr(opt, "sdrop_pattern", "step"), getattr(opt, "sdrop_count", "fixed"),
                   getattr(opt, "sdrop_backend", "auto"), getattr(opt, "sdrop_step_masks", 0),
                   getattr(opt, "sdrop_window_align", 1))

    @property
    def mode(self) -> str:
        return "dense" if self.backend == "dense" else "compact"

    @property
    def kernels(self) -> str:
        return "torch" if self.backend == "dense" else self.backend

    def ops(self, device):
        return get_ops(self.kernels, device)


def dropout_rate(opt) -> float:
    return opt.dropout[0] if isinstance(opt.dropout, (list, tuple)) else opt.dropout
