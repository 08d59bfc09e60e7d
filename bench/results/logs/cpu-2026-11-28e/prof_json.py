import sys, time, torch, os
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
common = cpu_bench.model_args(hidden=int(__import__("os").environ.get("HID", 500)), layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opts[n], s, t, l)
res = {}
for n, m in models.items():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for k in range(3):
            s, t, l, _ = data[2 + k]
            cpu_bench.train_step(m, opts[n], s, t, l)
        wall = (time.perf_counter() - t0) / 3
    ka = prof.key_averages()
    res[n] = {e.key: (e.self_cpu_time_total / 3e3, e.count / 3) for e in ka}
    print(f"===== {n} wall {wall*1e3:.0f} ms/step (profiled)")
keys = set()
for n in names: keys |= set(res[n])
tot = {n: sum(v[0] for v in res[n].values()) for n in names}
print("total self ms/step", {n: round(v) for n, v in tot.items()})
rows = sorted(keys, key=lambda k: -max(res[n].get(k, (0, 0))[0] for n in names))
import json; json.dump(res, open(os.environ["PJ"], "w"))
for k in rows[:0]:
    print(f"{k[:34]:34s} " + "  ".join(f"{res[n].get(k,(0,0))[0]:8.1f}ms {res[n].get(k,(0,0))[1]:6.0f}" for n in names))
