"""Registers the structured-dropout model parts and options with OpenNMT-py (at import).

* encoders ``sdrop_rnn`` and ``sdrop_brnn``, decoder ``sdrop_rnn`` (input feed on and off);
* the ``-sdrop_*`` options in every parser that has the model options (``onmt_train -h``);
* their validation, run by OpenNMT-py's own model-option check;
* the generator of an sdrop decoder reads only the kept units in training.
"""
from __future__ import annotations

import functools

import onmt.decoders
import torch.nn as nn
import onmt.encoders
import onmt.model_builder
import onmt.opts
from onmt.utils.parse import ArgumentParser

from .. import patches
from .config import SdropConfig, add_sdrop_opts, uses_sdrop, validate_sdrop_opts
from .decoder import SdropInputFeedDecoder, SdropStdDecoder, _SdropDecoderMixin
from .encoder import SdropBiRNNEncoder, SdropRNNEncoder
from .generator import SdropGenerator

__all__ = ["SdropConfig", "SdropRNNEncoder", "SdropBiRNNEncoder", "SdropInputFeedDecoder",
           "SdropStdDecoder", "SdropGenerator", "uses_sdrop", "validate_sdrop_opts"]


def _once(owner, name, make):
    """Replace ``owner.name`` by ``make(original)`` unless already done."""
    current = getattr(owner, name)
    if getattr(current, "_sdrop", False):
        return
    new = make(current)
    new._sdrop = True
    setattr(owner, name, new)


def _wrap_model_opts(inner):
    @functools.wraps(inner)
    def model_opts(parser):
        inner(parser)
        add_sdrop_opts(parser)

    return model_opts


def _wrap_validate(inner):
    func = inner.__func__

    def validate_model_opts(cls, model_opt):
        validate_sdrop_opts(model_opt)
        return func(cls, model_opt)

    return classmethod(validate_model_opts)


def _wrap_build(inner):
    @functools.wraps(inner)
    def build_base_model(*args, **kwargs):
        model = inner(*args, **kwargs)
        if isinstance(model.decoder, _SdropDecoderMixin) and type(model.generator) is nn.Linear:
            SdropGenerator.adopt(model.generator, model.decoder)
        return model

    return build_base_model


def register() -> None:
    patches.apply()
    for name, cls in (("sdrop_rnn", SdropRNNEncoder), ("sdrop_brnn", SdropBiRNNEncoder)):
        if name not in onmt.encoders.str2enc:
            onmt.encoders.register_encoder(name)(cls)
    if "sdrop_rnn" not in onmt.decoders.str2dec:
        onmt.decoders.register_decoder("sdrop_rnn")(SdropInputFeedDecoder)
    _once(onmt.opts, "model_opts", _wrap_model_opts)
    # _once reads the bound classmethod; store the wrapped one on the class itself
    if not getattr(ArgumentParser.__dict__["validate_model_opts"].__func__, "_sdrop", False):
        wrapped = _wrap_validate(ArgumentParser.__dict__["validate_model_opts"])
        wrapped.__func__._sdrop = True
        ArgumentParser.validate_model_opts = wrapped
    _once(onmt.model_builder, "build_base_model", _wrap_build)


register()
