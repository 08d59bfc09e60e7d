#!/usr/bin/env python
"""How many CUDA-graph shape buckets a corpus needs, and how often a cache of a given size
misses (plugin/graphs.py: one captured bucket per padded (source, target) batch shape).

Approximates OpenNMT-py's batching from whitespace token counts (``--inflate`` for subwords):
examples shuffled, cut into buckets of ``--bucket-size``, sorted by length inside each, cut into
batches of ``--batch`` sentences, each padded to a multiple of graphs.BUCKET on both sides (the
target with BOS/EOS), batches shuffled; then an LRU cache of each size in ``--capacity`` over
``--epochs`` epochs. A miss is a capture (a warm-up step and two captures, about ten steps' time).

    python bench/graph_buckets.py SRC TGT [--batch 64] [--capacity 16,32,64]
"""
from __future__ import annotations

import argparse
import lzma
import random
import sys
from collections import OrderedDict
from pathlib import Path

BUCKET = 8   # onmt_sdrop.plugin.graphs.BUCKET (not imported: this needs no torch)


def lengths(path: str, inflate: float) -> list[int]:
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [max(1, round(len(line.split()) * inflate)) for line in fh]


def shapes(src, tgt, *, batch, bucket_size, epochs, seed=0):
    """The padded (source, target) shape of every batch, epoch after epoch."""
    pad = lambda n: -(-n // BUCKET) * BUCKET  # noqa: E731
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        ex = [(s, t + 2) for s, t in zip(src, tgt)]
        rng.shuffle(ex)
        epoch = []
        for i in range(0, len(ex), bucket_size):
            b = sorted(ex[i:i + bucket_size])
            for j in range(0, len(b), batch):
                cut = b[j:j + batch]
                epoch.append((pad(max(s for s, _ in cut)), pad(max(t for _, t in cut))))
        rng.shuffle(epoch)
        out += epoch
    return out


def misses(keys, capacity: int) -> int:
    cache, n = OrderedDict(), 0
    for k in keys:
        if k in cache:
            cache.move_to_end(k)
        else:
            n += 1
            cache[k] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("tgt")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bucket-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--inflate", type=float, default=1.0, help="subwords per word")
    ap.add_argument("--capacity", default="16,32,64")
    args = ap.parse_args(argv)
    for path in (args.src, args.tgt):
        if not Path(path).is_file():
            print(f"graph_buckets.py: error: no such file: {path}", file=sys.stderr)
            return 2
    src, tgt = lengths(args.src, args.inflate), lengths(args.tgt, args.inflate)
    if len(src) != len(tgt):
        print(f"graph_buckets.py: error: {len(src)} source lines against {len(tgt)} target lines",
              file=sys.stderr)
        return 2
    keys = shapes(src, tgt, batch=args.batch, bucket_size=args.bucket_size, epochs=args.epochs)
    print(f"{len(src)} pairs, batch {args.batch}: {len(keys) // args.epochs} batches per epoch, "
          f"{len(set(keys))} shape buckets")
    for cap in (int(c) for c in args.capacity.split(",")):
        m = misses(keys, cap)
        print(f"  cache of {cap}: {m} captures in {args.epochs} epochs "
              f"({m / len(keys):.1%} of steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
