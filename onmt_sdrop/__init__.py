"""onmt_sdrop: structured (step-wise) dropout for OpenNMT-py LSTM models.

Importing this package is cheap and does not import OpenNMT-py; :mod:`onmt_sdrop.plugin` registers
the encoder/decoder and options, :mod:`onmt_sdrop.patches` makes OpenNMT-py 3.5.1 work on current
torch, and :mod:`onmt_sdrop.hook` applies both whenever ``onmt`` is imported.
"""
__version__ = "0.1.0"
