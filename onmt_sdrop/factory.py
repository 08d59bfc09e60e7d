"""Build an OpenNMT-py model from ``onmt_train`` options without data files: for the tests and
benchmarks only (it stands apart from the plugin, like ``patches``)."""
from __future__ import annotations

import pyonmttok
import torch
from onmt.constants import DefaultTokens, ModelTask
from onmt.model_builder import build_model
from onmt.opts import train_opts
from onmt.utils.parse import ArgumentParser


def model_opt(args):
    """Training options as ``onmt_train`` would parse them from ``args``, validated."""
    parser = ArgumentParser()
    train_opts(parser)
    opt = parser.parse_known_args(["-data", "{}", "-src_vocab", "x", "-tgt_vocab", "x", *args])[0]
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)
    opt.data_task = ModelTask.SEQ2SEQ
    return opt


def model_from_args(args, *, vocab_size: int, seed: int = 0):
    """(model, opt): OpenNMT-py's own builder, a synthetic shared vocabulary, CPU, float32."""
    opt = model_opt(list(args))
    specials = [DefaultTokens.UNK, DefaultTokens.PAD, DefaultTokens.BOS, DefaultTokens.EOS]
    vocab = pyonmttok.build_vocab_from_tokens([f"w{i}" for i in range(vocab_size - len(specials))],
                                              special_tokens=specials)
    vocab.default_id = vocab[DefaultTokens.UNK]
    vocabs = {"src": vocab, "tgt": vocab, "data_task": ModelTask.SEQ2SEQ,
              "decoder_start_token": DefaultTokens.BOS}
    torch.manual_seed(seed)
    return build_model(opt, opt, vocabs, None, -1), opt
