"""``sdrop_rnn`` decoder: OpenNMT-py's RNN decoders (input feed on and off) with structured dropout.

Same parameters as the stock ``rnn`` decoder, so checkpoints load either way. Dropout sites, as in
OpenNMT-py: the embeddings, between stacked layers, and the output after attention
``dec_out = drop(tanh(W_out [c; h]))``. That output is seen only dropped (by the generator and the
next step's input feed), so ``W_out`` computes only the kept units (producer compaction) and its
consumers read only those (consumer compaction).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from onmt.decoders.decoder import InputFeedRNNDecoder, StdRNNDecoder
from onmt.modules.sparse_activations import sparsemax
from onmt.utils.misc import sequence_mask

from ..errors import SdropError
from ..nn import lstm_cell, recurrent_weight, run_lstm
from .base import SdropMixin
from .config import SdropConfig, dropout_rate
from .generator import GeneratorLink


class AttentionMemory:
    """What OpenNMT-py's ``GlobalAttention`` recomputes at every step, made once per batch.

    For ``general`` attention ``score(h_t, h_s) = (W_in h_t) . h_s = h_t . (W_in^T h_s)``, so the
    keys ``enc_out W_in`` replace a ``linear_in`` GEMM per step (and its backward); the padding
    mask becomes an additive bias of one ``baddbmm``. ``mlp`` keeps OpenNMT-py's own score, and so
    does a single step (translation), where the keys would cost more than they save."""

    def __init__(self, attn, enc_out, src_len, steps):
        self.attn, self.values = attn, enc_out
        if attn.attn_type == "general" and steps > 1:
            self.keys = torch.matmul(enc_out, attn.linear_in.weight)
        elif attn.attn_type == "dot":
            self.keys = enc_out
        else:
            self.keys = None
        b, s = enc_out.shape[0], enc_out.shape[1]
        self.bias = None
        if src_len is not None:
            pad = sequence_mask(src_len, max_len=s).unsqueeze(1)    # (B, 1, S), True at padding
            self.bias = enc_out.new_zeros(b, 1, s).masked_fill(pad, -float("inf"))

    def context(self, query):
        """query (B, T, H) -> context (B, T, H), alignment (B, T, S)."""
        if self.keys is not None:
            keys_t = self.keys.transpose(1, 2)
            align = torch.bmm(query, keys_t) if self.bias is None else \
                torch.baddbmm(self.bias, query, keys_t)
        else:
            align = self.attn.score(query, self.values)
            if self.bias is not None:
                align = align + self.bias
        b, t, s = align.shape
        fn = F.softmax if self.attn.attn_func == "softmax" else sparsemax
        vec = fn(align.view(b * t, s), -1).view(b, t, s)
        return torch.bmm(vec, self.values), vec


class _SdropDecoderMixin(SdropMixin):
    def __init__(self, rnn_type, bidirectional_encoder, num_layers, hidden_size,
                 attn_type="general", attn_func="softmax", coverage_attn=False, context_gate=None,
                 copy_attn=False, dropout=0.0, embeddings=None, reuse_copy_attn=False,
                 copy_attn_type="general", config: SdropConfig | None = None):
        if rnn_type != "LSTM":
            raise SdropError(f"the sdrop decoder supports -rnn_type LSTM only, got {rnn_type}")
        super().__init__(rnn_type, bidirectional_encoder, num_layers, hidden_size, attn_type,
                         attn_func, coverage_attn, context_gate, copy_attn, dropout, embeddings,
                         reuse_copy_attn, copy_attn_type)
        self._init_sdrop(dropout, config or SdropConfig(), embeddings)
        self.sdrop_link = None
        self._pending = None

    @classmethod
    def from_opt(cls, opt, embeddings):
        target = SdropInputFeedDecoder if opt.input_feed else SdropStdDecoder
        return target(opt.rnn_type, opt.brnn, opt.dec_layers, opt.dec_hid_size,
                      opt.global_attention, opt.global_attention_function, opt.coverage_attn,
                      opt.context_gate, opt.copy_attn, dropout_rate(opt), embeddings,
                      opt.reuse_copy_attn, opt.copy_attn_type, config=SdropConfig.from_opt(opt))

    def _output_layer(self, site):
        """(prepared W_out, bias, activation) when W_out can compute only the kept units."""
        if not self.attentional or self.context_gate is not None:
            return None  # the context gate reads every unit of the attention output
        lin = self.attn.linear_out
        return site.prep(lin.weight, 0), lin.bias, self._out_activation

    def _out_activation(self, y):
        """GlobalAttention's output activation: tanh for general/dot, none for mlp."""
        return torch.tanh(y) if self.attn.attn_type in ("general", "dot") else y

    def _attend(self, rnn_out, memory, dec_in, site, t, out_layer):
        """Attention, context gate and output dropout: (dropped value, alignment or None).

        ``rnn_out`` is (B, H) at step ``t``, or (T, B, H) for all steps when ``t`` is None."""
        p_attn, dec_out = None, rnn_out
        if self.attentional:
            query = rnn_out.unsqueeze(1) if t is not None else rnn_out.transpose(0, 1)
            ctx, p_attn = memory.context(query)
            if t is not None:
                ctx, p_attn = ctx.squeeze(1), p_attn.squeeze(1)
            else:
                ctx = ctx.transpose(0, 1)
            concat = torch.cat([ctx, rnn_out], -1)
            if out_layer is not None:
                return site.produce(concat, t, *out_layer), p_attn
            dec_out = self._out_activation(self.attn.linear_out(concat))
        if self.context_gate is not None:
            shape = dec_out.shape
            dec_out = self.context_gate(dec_in.reshape(-1, dec_in.shape[-1]),
                                        rnn_out.reshape(-1, shape[-1]),
                                        dec_out.reshape(-1, shape[-1])).view(shape)
        return site.drop(dec_out, t), p_attn

    def forward(self, tgt, enc_out, src_len=None, step=None, **kwargs):
        dec_outs, attns = super().forward(tgt, enc_out, src_len=src_len, step=step, **kwargs)
        link, self._pending = self._pending, None
        self.sdrop_link = GeneratorLink(dec_outs, *link) if link is not None else None
        return dec_outs, attns


class SdropInputFeedDecoder(_SdropDecoderMixin, InputFeedRNNDecoder):
    """Input feeding decoder (Luong et al. 2015): per step, the input GEMMs on kept units."""

    def _run_forward_pass(self, tgt, enc_out, src_len=None):
        input_feed = self.state["input_feed"].squeeze(0)
        h, c = (list(s.unbind(0)) for s in self.state["hidden"])
        emb = self.embeddings(tgt).transpose(0, 1)            # (T, B, E), not dropped yet
        steps, emb_size = emb.shape[0], emb.shape[-1]
        ops = self._ops(emb.device)
        cells = self.rnn.layers
        s_emb = self._site(ops, emb_size, steps, emb)
        s_mid = [self._site(ops, self.hidden_size, steps, emb) for _ in cells[1:]]
        s_out = self._site(ops, self.hidden_size, steps, emb)

        w0 = cells[0].weight_ih
        w_feed = s_out.prep(w0[:, emb_size:], 1)
        w_mid = [s.prep(cell.weight_ih, 1) for s, cell in zip(s_mid, cells[1:])]
        out_layer = self._output_layer(s_out)
        emb_v = s_emb.drop(emb, None)
        # all steps at once, both biases of layer 0 folded in; the other layers' once per batch
        emb_proj = (s_emb.matmul(emb_v, None, s_emb.prep(w0[:, :emb_size], 1))
                    + (cells[0].bias_ih + cells[0].bias_hh)).unbind(0)  # one backward op, not T
        bias_mid = [cell.bias_ih + cell.bias_hh for cell in cells[1:]]
        w_hh = [recurrent_weight(cell) for cell in cells]
        feed_proj = F.linear(input_feed, w0[:, emb_size:])    # the carried feed is dense
        need_dec_in = self.context_gate is not None
        emb_d = s_emb.dense(emb_v, None).unbind(0) if need_dec_in else None

        dec_outs, compact = [], []
        attns = {"std": []} if self.attentional else {}
        if self.copy_attn is not None or self._reuse_copy_attn:
            attns["copy"] = []
        if self._coverage:
            attns["coverage"] = []
        coverage = self.state["coverage"].squeeze(0) if self.state["coverage"] is not None else None
        memory = AttentionMemory(self.attn, enc_out, src_len, steps) if self.attentional else None
        # the dense (scattered) output is needed per step only by the context gate and copy
        per_step_dense = need_dec_in or self.copy_attn is not None
        for t in range(steps):
            x = None
            for i in range(len(cells)):
                if i == 0:
                    # feed_proj first: the sum takes its (row-major) layout, which the
                    # recurrent addmm copies as is (a CPU backend may store emb_proj
                    # column-major)
                    gx = feed_proj + emb_proj[t]
                else:
                    gx = s_mid[i - 1].matmul(s_mid[i - 1].drop(x, t), t, w_mid[i - 1]) \
                        + bias_mid[i - 1]
                h[i], c[i] = lstm_cell(ops, gx, w_hh[i], h[i], c[i])
                x = h[i]
            dec_in = torch.cat([emb_d[t], input_feed], 1) if need_dec_in else None
            out_v, p_attn = self._attend(x, memory, dec_in, s_out, t, out_layer)
            feed_proj = s_out.matmul(out_v, t, w_feed)
            compact.append(out_v)
            if per_step_dense:
                dec_out = s_out.dense(out_v, t)
                input_feed = dec_out
                dec_outs.append(dec_out)
            if self.attentional:
                attns["std"].append(p_attn)
            if self._coverage:
                coverage = p_attn if coverage is None else p_attn + coverage
                attns["coverage"].append(coverage)
            if self.copy_attn is not None:
                attns["copy"].append(self.copy_attn(dec_out, enc_out)[1])
            elif self._reuse_copy_attn:
                attns["copy"] = attns["std"]
        compact = torch.stack(compact)
        if s_out.compact:
            self._pending = (s_out, compact)
        if not per_step_dense:   # one scatter for all steps, in OpenNMT-py's (B, T, H) layout
            dec_outs = s_out.dense(compact, None).transpose(0, 1).contiguous()
            # the base class stacks the attention lists only when dec_outs is a list
            stacked = {id(v): torch.stack(v) for v in attns.values()}
            attns = {k: stacked[id(v)] for k, v in attns.items()}
        return (torch.stack(h), torch.stack(c)), dec_outs, attns


class SdropStdDecoder(_SdropDecoderMixin, StdRNNDecoder):
    """Decoder without input feeding: every layer's input GEMM runs over all steps at once."""

    def _run_forward_pass(self, tgt, enc_out, src_len=None):
        if self.copy_attn is not None or self._coverage:
            raise SdropError("-input_feed 0 supports neither -copy_attn nor -coverage_attn "
                             "(as stock OpenNMT-py)")
        emb = self.embeddings(tgt).transpose(0, 1)
        steps = emb.shape[0]
        ops = self._ops(emb.device)
        sizes = [emb.shape[-1]] + [self.hidden_size] * (self.rnn.num_layers - 1)
        sites = [self._site(ops, size, steps, emb) for size in sizes]
        s_out = self._site(ops, self.hidden_size, steps, emb)
        rnn_out, dec_state = run_lstm(self.rnn, emb, sites, ops, state=self.state["hidden"])
        dec_in = None
        if self.context_gate is not None:
            dec_in = sites[0].dense(sites[0].drop(emb, None), None)
        memory = AttentionMemory(self.attn, enc_out, src_len, steps) if self.attentional else None
        out_v, p_attn = self._attend(rnn_out, memory, dec_in, s_out, None,
                                     self._output_layer(s_out))
        attns = {"std": p_attn} if self.attentional else {}
        if s_out.compact:
            self._pending = (s_out, out_v)
        return dec_state, s_out.dense(out_v, None).transpose(0, 1), attns
