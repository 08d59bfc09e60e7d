"""What the structured-dropout encoder and decoder share: the rate, the options, the sites."""
from __future__ import annotations

from ..nn import make_site


class SdropMixin:
    """Keeps OpenNMT-py's own dropout modules at 0 and draws the structured masks instead."""

    def _init_sdrop(self, dropout: float, config, embeddings) -> None:
        self.sdrop = config
        self.dropout_p = float(dropout)
        self._silence(embeddings)

    @staticmethod
    def _silence(embeddings) -> None:
        # the embedding output is a dropout site of ours; Embeddings must not drop it again
        embeddings.dropout_p = 0.0
        embeddings.dropout.p = 0.0

    def update_dropout(self, dropout, attention_dropout=None):
        """``-dropout_steps`` schedule: the new rate applies to our sites from the next batch."""
        self.dropout_p = float(dropout)
        self._silence(self.embeddings)

    def _ops(self, device):
        return self.sdrop.ops(device)

    def _site(self, ops, size, steps, like):
        """One dropout site for ``steps`` steps of a ``(B, size)`` activation like ``like``."""
        return make_site(self.dropout_p, pattern=self.sdrop.pattern, count=self.sdrop.count,
                         mode=self.sdrop.mode, ops=ops, steps=steps, batch=like.shape[-2],
                         size=size, device=like.device, dtype=like.dtype, training=self.training,
                         distinct=self.sdrop.step_masks, align=self.sdrop.window_align)
