"""``sdrop_rnn`` / ``sdrop_brnn``: OpenNMT-py's RNN encoder with structured dropout.

Same parameters as the stock ``rnn``/``brnn`` encoder (an ``nn.LSTM`` and optional bridge), so
checkpoints load either way. Dropout sites: the embeddings (layer-0 input) and between layers;
each layer's input projection over all steps is one grouped GEMM on the kept units.
"""
from __future__ import annotations

import torch
from onmt.encoders.rnn_encoder import RNNEncoder

from ..errors import SdropError
from ..nn import run_lstm
from .base import SdropMixin
from .config import SdropConfig, dropout_rate


class SdropRNNEncoder(SdropMixin, RNNEncoder):
    bidirectional = False

    def __init__(self, rnn_type, num_layers, hidden_size, dropout=0.0, embeddings=None,
                 use_bridge=False, config: SdropConfig | None = None):
        if rnn_type != "LSTM":
            raise SdropError(f"the sdrop encoder supports -rnn_type LSTM only, got {rnn_type}")
        if self.bidirectional and hidden_size % 2:
            raise SdropError(f"sdrop_brnn needs an even -enc_hid_size, got {hidden_size}")
        # nn.LSTM is only the parameter store here: its own dropout would never run
        super().__init__(rnn_type, self.bidirectional, num_layers, hidden_size, 0.0, embeddings,
                         use_bridge)
        self._init_sdrop(dropout, config or SdropConfig(), embeddings)

    @classmethod
    def from_opt(cls, opt, embeddings):
        return cls(opt.rnn_type, opt.enc_layers, opt.enc_hid_size, dropout_rate(opt), embeddings,
                   opt.bridge, SdropConfig.from_opt(opt))

    def forward(self, src, src_len=None):
        emb = self.embeddings(src)                      # (B, T, E), not dropped yet
        x = emb.transpose(0, 1)
        steps = x.shape[0]
        ops = self._ops(x.device)
        d = 2 if self.bidirectional else 1
        sizes = [x.shape[-1]] + [d * self.rnn.hidden_size] * (self.rnn.num_layers - 1)
        sites = [self._site(ops, size, steps, x) for size in sizes]
        out, final = run_lstm(self.rnn, x, sites, ops, lengths=src_len)
        # stock trims to src_len.max() (pad_packed_sequence); OpenNMT-py pads a batch to its
        # longest source, so that is the same width, and reading it back would be a host sync
        enc_out = out.transpose(0, 1).contiguous()
        if self.use_bridge:
            final = self._bridge(final)
        if self.bidirectional:
            # (layers*2, B, h) -> (layers, B, 2h): the decoder sees one state per layer
            final = tuple(torch.cat([s[0::2], s[1::2]], 2) for s in final)
        return enc_out, final, src_len


class SdropBiRNNEncoder(SdropRNNEncoder):
    bidirectional = True
