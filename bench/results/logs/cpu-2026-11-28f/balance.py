"""Side-by-side calls at N threads: per call, wall time vs each share's busy time (wall clock),
and which op (the caller's function name) made the call. Usage: balance.py THREADS STEPS"""
import collections, sys, threading, time, torch
sys.path.insert(0, "bench")
import cpu_bench
from onmt_sdrop.ops import torch_backend as tb
torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
orig = tb._run_side_by_side
rec = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])  # calls, wall, max share, min share, sum share
active = [False]
det = collections.defaultdict(lambda: [0, 0.0, 0.0])
def patched(work, shares):
    if not active[0] or len(shares) == 1:
        return orig(work, shares)
    times = [0.0] * len(shares)
    idx = {id(s): i for i, s in enumerate(shares)}
    def timed(share):
        t0 = time.perf_counter(); work(share); times[idx[id(share)]] = time.perf_counter() - t0
    caller = sys._getframe(1).f_code.co_name
    t0 = time.perf_counter(); orig(timed, shares); wall = time.perf_counter() - t0
    key = (caller, tuple(len(x) for x in shares), "main" if times[0] >= max(times[1:]) else "worker")
    det[key][0] += 1; det[key][1] += wall; det[key][2] += max(times) - min(times)
    r = rec[caller]; r[0] += 1; r[1] += wall; r[2] += max(times); r[3] += min(times); r[4] += sum(times)
tb._run_side_by_side = patched
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS["sdrop_compact"], 10000)
o = torch.optim.SGD(m.parameters(), lr=0.1)
data = cpu_bench.batches(8, 64, 10000)
def step(src, tgt, sl):
    out, _ = m(src, tgt, sl)
    logits = m.generator(out.reshape(-1, out.shape[-1]))
    loss = torch.nn.functional.cross_entropy(logits.float(), tgt[:, 1:, 0].reshape(-1), ignore_index=1, reduction="sum")
    o.zero_grad(set_to_none=True); (loss / src.shape[0]).backward(); o.step()
for s, t, l, _ in data[:2]: step(s, t, l)
active[0] = True
t0 = time.perf_counter()
for i in range(steps):
    s, t, l, _ = data[2 + i % 6]; step(s, t, l)
total = (time.perf_counter() - t0) / steps * 1e3
print(f"step {total:.0f} ms")
tw = 0
for k, (n, wall, mx, mn, sm) in sorted(rec.items(), key=lambda kv: -kv[1][1]):
    tw += wall
    print(f"{k:14s} calls/step {n/steps:5.1f}  wall {wall/steps*1e3:6.1f}  max-share {mx/steps*1e3:6.1f}  min-share {mn/steps*1e3:6.1f}  sum {sm/steps*1e3:6.1f}  wait(wall-min) {(wall-mn)/steps*1e3:5.1f}")
print(f"side-by-side wall {tw/steps*1e3:.0f} ms/step")

for k, (n, wall, d) in sorted(det.items(), key=lambda kv: -kv[1][2]):
    print(f"{str(k):60s} calls/step {n/steps:5.1f} wall {wall/steps*1e3:6.1f} max-min {d/steps*1e3:5.1f}")
