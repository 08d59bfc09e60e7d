#!/usr/bin/env python
"""Training throughput of stock OpenNMT-py vs our dense path vs our compacted path, in one run.

Builds the three models with OpenNMT-py's own builder (same options, same initial weights), trains
each on the same synthetic IWSLT-sized batches (forward, generator + NLL loss, backward, SGD step),
interleaving the models round by round so machine noise hits all three alike, and reports target
tokens per second after warm-up. Writes bench/results/cpu-<date>.json.

    python bench/cpu_bench.py [--steps 200] [--hidden 500] [--batch 64] [--dropout 0.3]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

import onmt_sdrop.hook

onmt_sdrop.hook.install()
from onmt_sdrop.factory import model_from_args, model_opt  # noqa: E402
from onmt_sdrop.plugin import graphs  # noqa: E402

VARIANTS = {
    "stock": ["-encoder_type", "brnn", "-decoder_type", "rnn"],
    "sdrop_dense": ["-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn",
                    "-sdrop_backend", "dense"],
    "sdrop_compact": ["-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn",
                      "-sdrop_backend", "torch"],
    # a few masks per batch: steps that share one are stacked into one GEMM
    "sdrop_compact_m4": ["-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn",
                         "-sdrop_backend", "torch", "-sdrop_step_masks", "4"],
}


def build(args, vocab_size, seed):
    model, _ = model_from_args(args, vocab_size=vocab_size, seed=seed)
    model.train()
    return model


def model_args(*, hidden, layers, dropout):
    """The benchmarks' model options, before a variant's own."""
    return ["-layers", str(layers), "-hidden_size", str(hidden), "-word_vec_size", str(hidden),
            "-dropout", str(dropout), "-global_attention", "general", "-input_feed", "1"]


def build_variant(args, vocab_size, device="cpu"):
    """A variant's model on ``device`` (seed 1), with CUDA graphs attached when its options ask
    for them (graphs attach to a model on its device)."""
    model = build(args, vocab_size, seed=1).to(device)
    if "-sdrop_cuda_graphs" in args:
        graphs.enable(model, model_opt(args))
    return model


def batches(n, batch, vocab, seed=0, mean_len=24, device="cpu"):
    """IWSLT-like batches: lengths around ``mean_len``; within a batch they are close, as after
    OpenNMT-py's length bucketing."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        center = float((torch.randn(1, generator=g) * 8 + mean_len).clamp(6, 50))
        s_len = (torch.rand(batch, generator=g) * 4 - 2 + center).clamp(4, 60).long()
        t_len = (s_len.float() * 1.05).long().clamp(4, 60)
        S, T = int(s_len.max()), int(t_len.max()) + 1
        src = torch.randint(4, vocab, (batch, S, 1), generator=g)
        tgt = torch.randint(4, vocab, (batch, T, 1), generator=g)
        for i in range(batch):
            src[i, s_len[i]:] = 1
            tgt[i, t_len[i] + 1:] = 1
        out.append((src.to(device), tgt.to(device), s_len.to(device), int(t_len.sum())))
    return out


def train_step(model, optim, src, tgt, src_len, amp=False):
    if model.__dict__.get("_sdrop_graphs") is not None:   # as the patched trainer does
        batch = {"src": src, "tgt": tgt}
        graphs.pad_batch(batch, src_pad=1, tgt_pad=1)
        src, tgt = batch["src"], batch["tgt"]
    with torch.autocast(src.device.type, dtype=torch.float16, enabled=amp):
        out, _ = model(src, tgt, src_len)
        logits = model.generator(out.reshape(-1, out.shape[-1]))
    gold = tgt[:, 1:, 0].reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.float(), gold, ignore_index=1,
                                             reduction="sum")
    optim.zero_grad(set_to_none=True)
    (loss / src.shape[0]).backward()
    optim.step()


def measure(variants, *, hidden, layers, batch, vocab, dropout, steps, warmup, rnd,
            device="cpu", amp=False, log=print, graphs_fell_back=None, around=None):
    """tgt tok/s of each variant (name -> extra options), same weights and batches, interleaved.
    ``graphs_fell_back``: a set that gets the variants whose CUDA graphs fell back to eager.
    ``around(name)``: a context manager each variant's steps run in (e.g. its kernel choice)."""
    around = around or (lambda name: contextlib.nullcontext())
    common = model_args(hidden=hidden, layers=layers, dropout=dropout)
    models = {name: build_variant(common + extra, vocab, device)
              for name, extra in variants.items()}
    first = next(iter(models.values()))
    for m in list(models.values())[1:]:
        torch.nn.Module.load_state_dict(m, first.state_dict())
    optims = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
    data = batches(rnd * 4, batch, vocab, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tokens = {n: 0 for n in models}
    seconds = {n: 0.0 for n in models}
    for name, m in models.items():
        # a graphed model captures each shape bucket once: warm it up on every bucket
        warm = data if m.__dict__.get("_sdrop_graphs") is not None else data[:warmup]
        with around(name):
            for src, tgt, sl, _ in warm:
                train_step(m, optims[name], src, tgt, sl, amp)
    done, i = 0, 0
    while done < steps:
        n = min(rnd, steps - done)
        for name, m in models.items():
            with around(name):
                sync()
                t0 = time.perf_counter()
                for k in range(n):
                    src, tgt, sl, ntok = data[(i + k) % len(data)]
                    train_step(m, optims[name], src, tgt, sl, amp)
                    tokens[name] += ntok
                sync()
                seconds[name] += time.perf_counter() - t0
        done += n
        i += n
        log(f"step {done}/{steps}: " + ", ".join(f"{k} {tokens[k] / seconds[k]:.0f} tok/s"
                                                 for k in models))
    if graphs_fell_back is not None:
        graphs_fell_back.update(n for n, m in models.items() if "-sdrop_cuda_graphs" in variants[n]
                                and m.__dict__.get("_sdrop_graphs") is None)
    return {k: round(tokens[k] / seconds[k], 1) for k in models}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="measured steps per model")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--round", type=int, default=5, help="steps per model before switching")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/cpu-<date>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok_s = measure(VARIANTS, hidden=args.hidden, layers=args.layers, batch=args.batch,
                    vocab=args.vocab, dropout=args.dropout, steps=args.steps,
                    warmup=args.warmup, rnd=args.round, log=lambda m: print(m, flush=True))
    result = {
        "device": f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                  "threads",
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "config": {"layers": args.layers, "hidden": args.hidden, "batch_sents": args.batch,
                   "vocab": args.vocab, "dropout": args.dropout, "measured_steps": args.steps,
                   "warmup_steps": args.warmup, "mean_len": 24, "encoder": "brnn/sdrop_brnn",
                   "decoder": "input-feed rnn, general attention",
                   "command": "python bench/cpu_bench.py " + " ".join(sys.argv[1:])},
        "tok_s": tok_s,
        "ratios": {"compact_vs_dense": round(tok_s["sdrop_compact"] / tok_s["sdrop_dense"], 3),
                   "compact_vs_stock": round(tok_s["sdrop_compact"] / tok_s["stock"], 3),
                   "dense_vs_stock": round(tok_s["sdrop_dense"] / tok_s["stock"], 3),
                   "compact_m4_vs_dense": round(tok_s["sdrop_compact_m4"] / tok_s["sdrop_dense"], 3),
                   "compact_m4_vs_stock": round(tok_s["sdrop_compact_m4"] / tok_s["stock"], 3)},
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"cpu-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["tok_s"]), json.dumps(result["ratios"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
