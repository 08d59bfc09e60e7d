import sys, time, torch
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
res = {}
for name in ["sdrop_dense", "sdrop_compact"]:
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[name], 10000)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s, t, l, _ in data[:2]:
        cpu_bench.train_step(m, opt, s, t, l)
    t0 = time.perf_counter()
    for s, t, l, _ in data[2:]:
        cpu_bench.train_step(m, opt, s, t, l)
    print(name, "4 steps wall", round(time.perf_counter() - t0, 3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        s, t, l, _ = data[2]
        cpu_bench.train_step(m, opt, s, t, l)
    ka = prof.key_averages()
    res[name] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in ka}
    print(name, "total self ms", round(sum(v[0] for v in res[name].values()), 1))
keys = sorted(set(res["sdrop_dense"]) | set(res["sdrop_compact"]),
              key=lambda k: -max(res["sdrop_dense"].get(k, (0, 0))[0], res["sdrop_compact"].get(k, (0, 0))[0]))
print(f"{'op':40s} {'dense ms':>9s} {'n':>6s} {'compact ms':>10s} {'n':>6s}")
for k in keys[:40]:
    d = res["sdrop_dense"].get(k, (0, 0)); c = res["sdrop_compact"].get(k, (0, 0))
    print(f"{k[:40]:40s} {d[0]:9.1f} {d[1]:6d} {c[0]:10.1f} {c[1]:6d}")
