"""The recipe pipeline, in four rooms:

- :mod:`.catalogue`  language pairs, profiles, the two models (what can be run)
- :mod:`.process`    child processes (die with the pipeline), checkpoints (intact, kept, best)
- :mod:`.stages`     prepare, spm, train, valid BLEU, translate, score, evidence, report
- :mod:`.cli`        the command line (``python -m onmt_sdrop.pipeline``)
"""
