import sys, time, torch, collections, threading
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from onmt_sdrop.ops import torch_backend as tb
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
stats = collections.defaultdict(lambda: [0, 0.0])
def wrap(name):
    f = getattr(tb, name)
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); dt = time.perf_counter() - t0
        x = a[0]; w = a[1]
        key = f"{name} G={x.shape[0] if x.shape[0] < 2 else 'T'} x={tuple(x.shape[1:])} w={tuple(w.shape)}"
        s = stats[key]; s[0] += 1; s[1] += dt
        return r
    setattr(tb, name, g)
for n in ["consumer_fwd", "consumer_dx", "consumer_dw", "producer_fwd", "producer_dx", "producer_dw"]:
    wrap(n)
tb._GEMMS = tb
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, 10000)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS["sdrop_compact"], 10000)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
stats.clear()
n = 6
t0 = time.perf_counter()
for s, t, l, _ in data[2:2+n]: cpu_bench.train_step(m, opt, s, t, l)
print(f"step {(time.perf_counter()-t0)/n*1e3:.0f} ms")
tot = 0
for k, (c, t) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
    tot += t
    print(f"{k:60s} {c/n:6.1f}/step {t/n*1e3:7.1f} ms")
print("sum", tot/n*1e3)
