import sys, time, torch, collections
sys.path.insert(0, "/work/main/bench"); sys.path.insert(0, "/tmp/w/old")
import cpu_bench, old_tb
from onmt_sdrop.ops import torch_backend as tb
torch.set_num_threads(2)
SIX = ["consumer_fwd", "consumer_dx", "consumer_dw", "producer_fwd", "producer_dx", "producer_dw"]
impls = {"new": {f: getattr(tb, f) for f in SIX}, "old": {f: getattr(old_tb, f) for f in SIX}}
stats = collections.defaultdict(lambda: [0, 0.0])
cur = ["new"]
def mk(f):
    def g(*a):
        fn = impls[cur[0]][f]
        t0 = time.perf_counter(); r = fn(*a); dt = time.perf_counter() - t0
        key = (f, "T" if a[0].shape[0] > 1 else "1", a[1].shape[0] if f.startswith("consumer") and f != "consumer_dw" else "", cur[0])
        s = stats[key]; s[0] += 1; s[1] += dt
        return r
    return g
for f in SIX: setattr(tb, f, mk(f))
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, 10000)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS["sdrop_compact"], 10000)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
stats.clear()
steps = {"new": 0.0, "old": 0.0}
R = int(sys.argv[1]) if len(sys.argv) > 1 else 4
for r in range(R):
    for impl in ("old", "new"):
        cur[0] = impl
        t0 = time.perf_counter()
        for s, t, l, _ in data[2 + (r % 2) * 3: 5 + (r % 2) * 3]: cpu_bench.train_step(m, opt, s, t, l)
        steps[impl] += time.perf_counter() - t0
n = R * 3
print({k: round(v / n * 1e3) for k, v in steps.items()})
keys = sorted({k[:3] for k in stats})
for k in keys:
    o = stats[k + ("old",)]; w = stats[k + ("new",)]
    print(f"{str(k):40s} old {o[1]/n*1e3:7.1f} new {w[1]/n*1e3:7.1f} ms/step  ({o[0]/n:.0f} calls)")
print("sum old", sum(v[1] for k, v in stats.items() if k[3]=="old")/n*1e3, "new", sum(v[1] for k, v in stats.items() if k[3]=="new")/n*1e3)
