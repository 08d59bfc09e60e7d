"""CUDA graphs of the sdrop encoder and decoder, forward and backward (``-sdrop_cuda_graphs``).

At the default size a training step is launch-bound (an H200 spent 4-5x its GPU time on the
wall), so the encoder + decoder of an sdrop model run as one captured forward graph and one
backward graph per shape bucket (``torch.cuda.make_graphed_callables``); the generator and
OpenNMT-py's loss stay eager (the loss reads values back with ``.item()``).

* Buckets: the trainer pads every batch's source and target to a multiple of :data:`BUCKET`
  (padding is masked by the lengths and ignored by the loss), so a few graphs serve a corpus;
  at most ``capacity`` stay cached (least recently used first out), all in one memory pool; one
  info line per capture.
* Masks: a graph cannot copy from the host. The first (warm-up) run of a bucket records every
  mask the sites ask for and allocates device buffers for them; later runs, the capture included,
  read those buffers; before each replay :meth:`StaticMasks.refill` draws new masks on the host
  RNG in the recorded order, exactly as an eager step would, so ``-seed`` reproduces a run and a
  replay equals the eager step on the same masks.
* Autocast (``-model_dtype fp16``): a bucket's graphs are captured under the caller's autocast
  dtype with autocast's cast cache off (a cached cast would be the copy made at capture, stale
  after the next optimizer step); fp32 and autocast steps get graphs of their own.
* What cannot be captured runs eagerly, with one info line: the torch backend in compact mode
  (it plans its GEMMs from the masks' host windows), Bernoulli counts (the shapes change),
  sample/element patterns, copy and coverage attention, alignment, truncated BPTT.

Each process of a multi-GPU run holds its own graphs; the backward graph's parameter gradients
reach ``param.grad`` through autograd before OpenNMT-py's all-reduce reads them.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from onmt.utils.logging import logger

from ..masks import StepMask, sample_step_mask
from ..nn import set_mask_source
from ..ops import cupy_backend
from .generator import GeneratorLink

# "auto" (-sdrop_cuda_graphs -1) turns graphs on on a GPU: tests/test_graphs.py's GPU tests
# passed on an H200 (bench/results/logs/gpu-tests-2026-11-27.log). False: only when asked for (1).
GRAPHS_VALIDATED = True
# What "auto" leaves to -sdrop_cuda_graphs 1 until a GPU run has validated it: captures under
# autocast (-model_dtype fp16; tests/test_graphs.py has the GPU test) and multi-GPU training
# (never run here: one GPU at most).
AUTOCAST_GRAPHS_VALIDATED = False
MULTI_GPU_GRAPHS_VALIDATED = False
BUCKET = 8
# Buckets kept: a miss costs a capture (a warm-up step and two captures). bench/graph_buckets.py
# estimates Multi30k at 15-16 buckets, and IWSLT'14's valid split alone at 31 (21 without
# subwords), where a cache of 16 captured 74 times in 3 epochs against 31 with 32. A bucket keeps
# only its graphs' static inputs and outputs; the rest of the pool is shared.
CAPACITY = 64


def padded(n: int) -> int:
    return -(-n // BUCKET) * BUCKET


def pad_batch(batch: dict, src_pad: int, tgt_pad: int) -> None:
    """Pad ``batch["src"]`` and ``batch["tgt"]`` (B, T, 1) in place to multiples of BUCKET."""
    for key, pad in (("src", src_pad), ("tgt", tgt_pad)):
        t = batch[key]
        extra = padded(t.shape[1]) - t.shape[1]
        if extra:
            batch[key] = torch.cat([t, t.new_full((t.shape[0], extra, t.shape[2]), pad)], 1)


class StaticMasks:
    """The mask source of one bucket: records the sites' requests on its first run, then serves
    fresh :class:`StepMask` objects over the same device buffers (so the index tensors a mask
    caches are made inside the captured graph, and so remade at each replay)."""

    def __init__(self):
        self.records = []
        self.cursor = None

    def begin(self) -> None:
        self.cursor = 0 if self.records else None

    def __call__(self, steps, size, p, count, fixed, distinct, align, device) -> StepMask:
        args = (steps, size, p, count, fixed, distinct, align)
        if self.cursor is None:
            m = sample_step_mask(steps, size, p, count=count, fixed=fixed, distinct=distinct,
                                 align=align)
            static = m.packed_to(device)   # views of one buffer, refilled whole
            self.records.append((args, static))
            return static
        want, static = self.records[self.cursor]
        assert want == args, f"the sites asked for other masks than recorded: {args} != {want}"
        self.cursor += 1
        return static.unpacked(static.buffer)   # a fresh object: its caches are made anew

    def refill(self) -> None:
        """New masks, drawn on the host RNG in the order an eager step draws them."""
        for (steps, size, p, count, fixed, distinct, align), static in self.records:
            m = sample_step_mask(steps, size, p, count=count, fixed=fixed, distinct=distinct,
                                 align=align)
            # one asynchronous copy from pinned memory into the buffer the graph reads
            static.buffer.copy_(m.packed(pin=static.buffer.is_cuda), non_blocking=True)


class EncoderDecoder(nn.Module):
    """The part of OpenNMT-py's ``NMTModel.forward`` that is captured: encoder, decoder state and
    decoder, returning tensors only (the decoder output, the attention, the compact output)."""

    def __init__(self, model, masks: StaticMasks):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self.masks = masks
        self.link = None

    def forward(self, src, tgt, src_len):
        self.masks.begin()
        previous = set_mask_source(self.masks)
        try:
            enc_out, enc_final_hs, src_len = self.encoder(src, src_len)
            self.decoder.init_state(src, enc_out, enc_final_hs)
            dec_out, attns = self.decoder(tgt[:, :-1, :], enc_out, src_len=src_len)
        finally:
            set_mask_source(previous)
        self.link = self.decoder.sdrop_link
        compact = self.link.compact if self.link is not None else dec_out.new_zeros(())
        return dec_out, attns["std"], compact


class ThreadLocalCapture(torch.cuda.graph):
    """``torch.cuda.graph`` in "thread_local" capture mode, and leaving its capture stream even
    when ending the capture fails.

    * "global" (torch's default) fails the capture, and poisons the other thread, when any
      thread makes a CUDA call that a capture forbids. The pin-memory thread of OpenNMT-py's
      DataLoader (``-num_workers`` > 0) allocates pinned memory at any time: on an H200 that
      killed the training run ("Caught AcceleratorError in pin memory thread"). Its calls touch
      no stream of ours, so only the capturing thread needs the check.
    * torch's ``__exit__`` skips leaving the capture stream when ``capture_end`` raises, which
      left the process on that stream and broke every later RNG call."""

    def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="thread_local",
                 **kwargs):
        super().__init__(cuda_graph, pool=pool, stream=stream,
                         capture_error_mode=capture_error_mode, **kwargs)

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        except BaseException:
            if torch.cuda.current_stream() == self.capture_stream:   # capture_end raised
                self.stream_ctx.__exit__(*exc)
            raise


@contextmanager
def thread_local_capture():
    """``torch.cuda.make_graphed_callables`` builds its ``torch.cuda.graph`` contexts itself and
    (torch <= 2.13) takes no capture mode: while it runs, ``torch.cuda.graph`` is
    :class:`ThreadLocalCapture`. One capture runs at a time in a process (a CUDA rule)."""
    original = torch.cuda.graph
    torch.cuda.graph = ThreadLocalCapture
    try:
        yield
    finally:
        torch.cuda.graph = original


class CaptureFailed(RuntimeError):
    """A bucket could not be captured; training goes on with eager steps."""


class GraphedModel:
    """Encoder + decoder of ``model`` as CUDA graphs, one per (batch, source, target) shape."""

    def __init__(self, model, capacity: int = CAPACITY, capture=None):
        self.model = model
        self.capacity = capacity
        self.capture = capture or self._make_graphed
        self.cache: OrderedDict = OrderedDict()
        self.pool = None

    def _make_graphed(self, module, args):
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with thread_local_capture():
            return torch.cuda.make_graphed_callables(module, args, allow_unused_input=True,
                                                     pool=self.pool)

    def _entry(self, src, tgt, src_len):
        dec = self.model.decoder
        device = src.device.type
        amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        key = (tuple(src.shape), tuple(tgt.shape), getattr(dec, "dropout_p", None),
               getattr(self.model.encoder, "dropout_p", None), amp)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        masks = StaticMasks()
        module = EncoderDecoder(self.model, masks)
        static = (src.clone(), tgt.clone(), src_len.clone())
        # warm-up and capture draw masks too: the step itself must draw what an eager step would
        rng = torch.get_rng_state()
        try:
            with torch.autocast(device, dtype=amp, cache_enabled=False) if amp else nullcontext():
                fn = self.capture(module, static)
        except Exception as exc:  # noqa: BLE001 - any failure: the caller goes on eagerly
            raise CaptureFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            torch.set_rng_state(rng)
        self.cache[key] = entry = (fn, module, masks, static)
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        logger.info(f"sdrop: CUDA graphs captured for source {tuple(src.shape[:2])}, target "
                    f"{tuple(tgt.shape[:2])}{' (autocast)' if amp else ''}; "
                    f"{len(self.cache)} of {self.capacity} cached")
        return entry

    def __call__(self, src, tgt, src_len):
        fn, module, masks, static = self._entry(src, tgt, src_len)
        for dst, value in zip(static, (src, tgt, src_len)):
            dst.copy_(value)
        masks.refill()
        dec_out, attn, compact = fn(*static)
        link = module.link
        self.model.decoder.sdrop_link = (GeneratorLink(dec_out, link.site, compact)
                                         if link is not None else None)
        return dec_out, {"std": attn}


def unsupported(opt, model) -> str | None:
    """Why the sdrop parts of ``model`` cannot be captured with options ``opt``, or None."""
    config = getattr(model.decoder, "sdrop", None) or getattr(model.encoder, "sdrop", None)
    if config is None:
        return "the model has no sdrop encoder or decoder"
    if not next(model.parameters()).is_cuda:
        return "the model is not on a GPU"
    if config.count != "fixed" or config.pattern not in ("step", "fixed"):
        return "only -sdrop_count fixed with -sdrop_pattern step or fixed can be captured"
    if config.mode == "compact" and config.ops(torch.device("cuda")) is not cupy_backend:
        return "the torch backend plans its GEMMs on the host (use the CUDA backend)"
    for flag, what in (("copy_attn", "-copy_attn"), ("coverage_attn", "-coverage_attn"),
                       ("lambda_align", "alignment"), ("truncated_decoder", "-truncated_decoder")):
        if getattr(opt, flag, 0):
            return f"{what} is not captured"
    if not hasattr(model.decoder, "attn") or not model.decoder.attentional:
        return "a decoder without attention is not captured"
    return None


def not_yet_validated(opt) -> str | None:
    """Why "auto" leaves graphs off for options ``opt`` that no GPU run has validated, or None."""
    if getattr(opt, "model_dtype", "fp32") == "fp16" and not AUTOCAST_GRAPHS_VALIDATED:
        return "-model_dtype fp16 graphs are not validated on a GPU yet (-sdrop_cuda_graphs 1 " \
               "turns them on)"
    if getattr(opt, "world_size", 1) > 1 and not MULTI_GPU_GRAPHS_VALIDATED:
        return "graphs are not validated with -world_size > 1 yet (-sdrop_cuda_graphs 1 turns " \
               "them on)"
    return None


def enable(model, opt) -> bool:
    """Attach graphs to ``model`` when ``-sdrop_cuda_graphs`` asks for them and they can run;
    says in one info line when they were asked for and cannot."""
    wanted = getattr(opt, "sdrop_cuda_graphs", -1)
    if wanted == 0 or (wanted < 0 and not GRAPHS_VALIDATED):
        return False
    why = unsupported(opt, model) or (None if wanted > 0 else not_yet_validated(opt))
    if why is not None:
        if wanted > 0 or next(model.parameters()).is_cuda:
            logger.info(f"sdrop: CUDA graphs off, eager steps instead: {why}")
        return False
    model.__dict__["_sdrop_graphs"] = GraphedModel(model)
    logger.info(f"sdrop: CUDA graphs on (buckets of {BUCKET} steps, up to {CAPACITY} cached)")
    return True


def wrap_model_forward(inner):
    """``NMTModel.forward``: a training step of a model with graphs runs them."""
    def forward(self, src, tgt, src_len, bptt=False, with_align=False):
        graphs = self.__dict__.get("_sdrop_graphs")
        if graphs is None or not self.training or bptt or with_align \
                or not torch.is_grad_enabled():
            return inner(self, src, tgt, src_len, bptt=bptt, with_align=with_align)
        try:
            return graphs(src, tgt, src_len)
        except CaptureFailed as exc:
            self.__dict__["_sdrop_graphs"] = None
            logger.info(f"sdrop: CUDA graphs off, eager steps from now on: capture failed ({exc})")
            return inner(self, src, tgt, src_len, bptt=bptt, with_align=with_align)
    return forward


def wrap_gradient_accumulation(inner):
    """``Trainer._gradient_accumulation``: pad each batch to its bucket when graphs are on."""
    def _gradient_accumulation(self, true_batches, *args, **kwargs):
        model = self.model
        if model.__dict__.get("_sdrop_graphs") is not None:
            src_pad = model.encoder.embeddings.word_padding_idx
            tgt_pad = model.decoder.embeddings.word_padding_idx
            for batch in true_batches:
                pad_batch(batch, src_pad, tgt_pad)
        return inner(self, true_batches, *args, **kwargs)
    return _gradient_accumulation
