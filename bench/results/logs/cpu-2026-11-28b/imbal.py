import sys, time, torch, collections, threading
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from onmt_sdrop.ops import torch_backend as tb
torch.set_num_threads(2)
import os
if os.environ.get("SWI"): sys.setswitchinterval(float(os.environ["SWI"]))
stats = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])  # calls, total, main, worker
orig = tb._run_side_by_side
def patched(work, shares):
    import inspect
    caller = sys._getframe(1).f_code.co_name
    if len(shares) == 1:
        t0 = time.perf_counter(); work(shares[0]); s = stats[caller+"/1"]; s[0]+=1; s[1]+=time.perf_counter()-t0; return
    times = {}
    def timed(share, i=[0]):
        t = time.perf_counter(); work(share); times[threading.get_ident()] = time.perf_counter() - t
    t0 = time.perf_counter()
    orig(timed, shares)
    tot = time.perf_counter() - t0
    main = times.pop(threading.get_ident())
    s = stats[caller]; s[0]+=1; s[1]+=tot; s[2]+=main; s[3]+=sum(times.values())
tb._run_side_by_side = patched
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, 10000)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS["sdrop_compact"], 10000)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
stats.clear()
t0 = time.perf_counter()
n = 6
for s, t, l, _ in data[2:2+n]: cpu_bench.train_step(m, opt, s, t, l)
print(f"step {(time.perf_counter()-t0)/n*1e3:.0f} ms")
for k, (c, tot, mn, wk) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:14s} calls/step {c/n:6.1f} total {tot/n*1e3:7.1f} ms  main {mn/n*1e3:7.1f}  worker {wk/n*1e3:7.1f}  wait-ish {(tot-min(mn,wk) if wk else 0)/n*1e3:6.1f}")
