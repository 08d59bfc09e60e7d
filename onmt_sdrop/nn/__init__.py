"""LSTM building blocks with structured-dropout sites (no OpenNMT-py here)."""
from .dropout import CompactDrop, DenseDrop, NoDrop, make_site, set_mask_source
from .lstm import lstm_cell, lstm_layer_weights, recurrent_weight, reverse_padded, run_lstm

__all__ = ["CompactDrop", "DenseDrop", "NoDrop", "make_site", "set_mask_source", "lstm_cell",
           "recurrent_weight", "lstm_layer_weights", "reverse_padded", "run_lstm"]
