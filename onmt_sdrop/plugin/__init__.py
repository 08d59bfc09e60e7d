"""Registers the structured-dropout model parts and options with OpenNMT-py (at import).

* encoders ``sdrop_rnn`` and ``sdrop_brnn``, decoder ``sdrop_rnn`` (input feed on and off);
* the ``-sdrop_*`` options in every parser that has the model options (``onmt_train -h``), and
  ``-sdrop_backend`` in ``onmt_translate``'s;
* their validation, run by OpenNMT-py's own model-option check;
* the generator of an sdrop decoder reads only the kept units in training;
* the validation iterator loads without DataLoader workers (OpenNMT-py 3.5.1 would start fresh
  ones at every validation); a batch for a GPU is moved in one pinned copy per tensor, not one
  synchronising copy per sentence;
* ``-sdrop_backend`` is a run-time choice, not a model property: a checkpoint's stored value is
  replaced by this run's (``onmt_train -train_from``: its ``-sdrop_backend``; ``onmt_translate``:
  its own ``-sdrop_backend``, default ``auto``), so a model trained with ``cupy`` on a GPU loads on
  a CPU.

Every replacement goes through :func:`onmt_sdrop.patches.wrap_once`; the replaced names are listed
in :mod:`onmt_sdrop.patches`.
"""
from __future__ import annotations

import copy
import functools
import inspect

import onmt.decoders
import torch
import torch.nn as nn
import onmt.encoders
import onmt.inputters.dynamic_iterator
import onmt.model_builder
import onmt.opts
import onmt.models.model
import onmt.train_single
import onmt.trainer
from onmt.constants import CorpusTask
from onmt.utils.logging import logger
from onmt.utils.parse import ArgumentParser

from .. import patches
from ..patches import wrap_once
from . import graphs
from .config import BACKEND_CHOICES, SdropConfig, add_sdrop_opts, uses_sdrop, validate_sdrop_opts
from .decoder import SdropInputFeedDecoder, SdropStdDecoder, _SdropDecoderMixin
from .encoder import SdropBiRNNEncoder, SdropRNNEncoder
from .generator import SdropGenerator

__all__ = ["SdropConfig", "SdropRNNEncoder", "SdropBiRNNEncoder", "SdropInputFeedDecoder",
           "SdropStdDecoder", "SdropGenerator", "uses_sdrop", "validate_sdrop_opts"]

# the -sdrop_backend of the running command, stamped on every checkpoint's options when read;
# inference: inside load_test_model (translation: nothing is dropped)
_RUN = {"backend": "auto", "inference": False}


def _wrap_model_opts(inner):
    @functools.wraps(inner)
    def model_opts(parser):
        inner(parser)
        add_sdrop_opts(parser)

    return model_opts


def _wrap_translate_opts(inner):
    @functools.wraps(inner)
    def translate_opts(parser):
        inner(parser)
        group = parser.add_argument_group("Structured dropout (onmt_sdrop)")
        group.add("--sdrop_backend", "-sdrop_backend", type=str, default="auto",
                  choices=BACKEND_CHOICES,
                  help="Kernels for the sdrop LSTM recurrence at inference (there is no dropout "
                       "at inference). The checkpoint's own -sdrop_backend is not used: a model "
                       "trained with cupy on a GPU translates on a CPU.")

    return translate_opts


def _wrap_validate(inner):
    def validate_model_opts(cls, model_opt):
        validate_sdrop_opts(model_opt, training=not _RUN["inference"])
        return inner(cls, model_opt)

    return validate_model_opts


def _wrap_ckpt_model_opts(inner):
    def ckpt_model_opts(cls, ckpt_opt):
        opt = inner(cls, ckpt_opt)
        opt.sdrop_backend = _RUN["backend"]  # a run-time choice, not the checkpoint's
        return opt

    return ckpt_model_opts


def _run_backend(opt):
    return getattr(opt, "sdrop_backend", None) or "auto"


def _wrap_load_test_model(inner):
    @functools.wraps(inner)
    def load_test_model(opt, *args, **kwargs):
        before = dict(_RUN)
        _RUN.update(backend=_run_backend(opt), inference=True)
        try:
            return inner(opt, *args, **kwargs)
        finally:
            _RUN.update(before)

    return load_test_model


# model options a resume takes from the checkpoint, silently in stock OpenNMT-py
RESUME_KEPT = ("dropout", "encoder_type", "decoder_type", "sdrop_pattern", "sdrop_count",
               "sdrop_step_masks", "sdrop_window_align")


def _say_kept_options(model_opt, opt) -> None:
    """One info line naming the options this run gave that the resumed model does not use."""
    def text(v):
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    diff = [f"-{k} {text(getattr(model_opt, k))} (not {text(getattr(opt, k))})"
            for k in RESUME_KEPT if hasattr(opt, k) and hasattr(model_opt, k)
            and getattr(model_opt, k) != getattr(opt, k)]
    if diff:
        logger.info(f"-train_from: training on with the checkpoint's {', '.join(diff)}; a resume "
                    f"takes the model options from the checkpoint (--override_opts takes this "
                    f"run's)")


def _wrap_get_model_opts(inner):
    @functools.wraps(inner)
    def _get_model_opts(opt, checkpoint=None):
        before = dict(_RUN)
        _RUN.update(backend=_run_backend(opt), inference=False)
        try:
            model_opt = inner(opt, checkpoint)
        finally:
            _RUN.update(before)
        if checkpoint is not None and model_opt is not opt:
            _say_kept_options(model_opt, opt)
        return model_opt

    return _get_model_opts


def scheduled_index(dropout_steps, step: int) -> int:
    """Index of the -dropout_steps entry in force at training step ``step`` (the trainer switches
    to entry i at step dropout_steps[i] + 1)."""
    return max([0] + [i for i, s in enumerate(dropout_steps) if i and s + 1 <= step])


def _wrap_train_build_model(inner):
    """Stock OpenNMT-py switches dropout only *at* a -dropout_steps boundary, so a resume past one
    would train on with the schedule's first rate: set the rate in force at the resumed step."""
    @functools.wraps(inner)
    def build_model(model_opt, opt, vocabs, checkpoint, *args, **kwargs):
        model = inner(model_opt, opt, vocabs, checkpoint, *args, **kwargs)
        if uses_sdrop(model_opt):
            graphs.enable(model, opt)
        steps = list(getattr(opt, "dropout_steps", []) or [])
        optim = (checkpoint or {}).get("optim") or {}
        if len(steps) > 1 and getattr(opt, "reset_optim", "none") != "all" and optim:
            step = int(optim.get("training_step", 1))
            i = scheduled_index(steps, step)
            if i:
                model.update_dropout(opt.dropout[i], opt.attention_dropout[i])
                logger.info(f"-train_from at step {step}: dropout {opt.dropout[i]}, attention "
                            f"dropout {opt.attention_dropout[i]} (the -dropout_steps schedule's "
                            f"rate since step {steps[i] + 1})")
        return model

    return build_model


def _wrap_build(inner):
    @functools.wraps(inner)
    def build_base_model(*args, **kwargs):
        model = inner(*args, **kwargs)
        if isinstance(model.decoder, _SdropDecoderMixin) and type(model.generator) is nn.Linear:
            SdropGenerator.adopt(model.generator, model.decoder)
        return model

    return build_base_model


def _wrap_dataset_iter(build):
    """The validation iterator loads batches in the training process. With ``-num_workers`` > 0
    OpenNMT-py 3.5.1 starts fresh DataLoader workers (context "spawn", not persistent) at every
    validation, seconds each (10.4 s against 0.07 s for the tiny model on this project's CPU),
    and a validation set is small; training keeps its workers."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def build_dynamic_dataset_iter(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        opt = bound.arguments["opt"]
        task = bound.arguments.get("task", signature.parameters["task"].default)
        if task == CorpusTask.VALID and getattr(opt, "num_workers", 0) > 0:
            bound.arguments["opt"] = copy.copy(opt)
            bound.arguments["opt"].num_workers = 0
        return build(*bound.args, **bound.kwargs)

    return build_dynamic_dataset_iter


def _wrap_tensorify(tensorify):
    """A batch for a GPU is made on the CPU and moved in one pinned, non-blocking copy per
    tensor. With ``-num_workers 0`` OpenNMT-py 3.5.1 makes every sentence a device tensor of its
    own, a pageable (so synchronising) copy each: 131 copies and 136 host syncs per step on an
    H200 at batch 64, for stock and sdrop alike, 5-7.5 ms of a 27-48 ms step. Same values, same
    devices."""
    @functools.wraps(tensorify)
    def batch_on_device(vocabs, minibatch, device, left_pad=False):
        device = torch.device(device)
        if device.type == "cpu":
            return tensorify(vocabs, minibatch, device, left_pad)
        batch = tensorify(vocabs, minibatch, torch.device("cpu"), left_pad)
        pin = device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin)
                if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    return batch_on_device


def register() -> None:
    patches.apply()
    for name, cls in (("sdrop_rnn", SdropRNNEncoder), ("sdrop_brnn", SdropBiRNNEncoder)):
        if name not in onmt.encoders.str2enc:
            onmt.encoders.register_encoder(name)(cls)
    if "sdrop_rnn" not in onmt.decoders.str2dec:
        onmt.decoders.register_decoder("sdrop_rnn")(SdropInputFeedDecoder)
    wrap_once(onmt.opts, "model_opts", _wrap_model_opts)
    wrap_once(onmt.opts, "translate_opts", _wrap_translate_opts)
    wrap_once(ArgumentParser, "validate_model_opts", _wrap_validate)
    wrap_once(ArgumentParser, "ckpt_model_opts", _wrap_ckpt_model_opts)
    wrap_once(onmt.model_builder, "build_base_model", _wrap_build)
    wrap_once(onmt.model_builder, "load_test_model", _wrap_load_test_model)
    wrap_once(onmt.train_single, "_get_model_opts", _wrap_get_model_opts)
    wrap_once(onmt.train_single, "build_model", _wrap_train_build_model)
    wrap_once(onmt.models.model.NMTModel, "forward", graphs.wrap_model_forward)
    wrap_once(onmt.trainer.Trainer, "_gradient_accumulation", graphs.wrap_gradient_accumulation)
    wrap_once(onmt.train_single, "build_dynamic_dataset_iter", _wrap_dataset_iter)
    wrap_once(onmt.inputters.dynamic_iterator, "tensorify", _wrap_tensorify)


register()
