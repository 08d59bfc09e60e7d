"""Two-thread torch profile of a training step, worker threads included
(profile_all_threads, torch 2.13). Usage: prof_all_threads.py THREADS ROUNDS OUT.json
Self CPU ms per step per op, summed over threads, dense vs compact, interleaved rounds."""
import collections, json, sys, time, torch
sys.path.insert(0, "bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
from torch._C._profiler import _ExperimentalConfig
torch.set_num_threads(int(sys.argv[1]))
rounds = int(sys.argv[2])
names = ["sdrop_dense", "sdrop_compact"]
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
torch.nn.Module.load_state_dict(models[names[1]], models[names[0]].state_dict())
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opts[n], s, t, l)
self_ms = {n: collections.Counter() for n in names}
calls = {n: collections.Counter() for n in names}
by_thread = {n: collections.Counter() for n in names}
wall = {n: [] for n in names}
steps = 0
for r in range(rounds):
    for n, m in models.items():
        with profile(activities=[ProfilerActivity.CPU],
                     experimental_config=_ExperimentalConfig(profile_all_threads=True)) as prof:
            t0 = time.perf_counter()
            for k in range(3):
                s, t, l, _ = data[2 + (k + r) % 4]
                cpu_bench.train_step(m, opts[n], s, t, l)
            wall[n].append((time.perf_counter() - t0) / 3 * 1e3)
        for e in prof.events():
            self_ms[n][e.key] += e.self_cpu_time_total / 1e3
            calls[n][e.key] += 1
            by_thread[n][e.thread] += e.self_cpu_time_total / 1e3
    steps += 3
res = {n: {"wall_ms_per_step_profiled": sorted(wall[n]),
           "self_ms_per_step_by_thread": {str(k): round(v / steps, 1) for k, v in by_thread[n].items()},
           "ops": {k: [round(v / steps, 2), round(calls[n][k] / steps, 1)] for k, v in self_ms[n].most_common()}}
       for n in names}
json.dump(res, open(sys.argv[3], "w"), indent=1)
d, c = res["sdrop_dense"], res["sdrop_compact"]
print("wall ms/step (profiled)", {n: [round(x) for x in res[n]["wall_ms_per_step_profiled"]] for n in names})
print("self ms/step by thread", {n: res[n]["self_ms_per_step_by_thread"] for n in names})
keys = set(d["ops"]) | set(c["ops"])
gemm = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")
for n in names:
    print(n, "GEMMs self ms/step (all threads):", round(sum(res[n]["ops"].get(k, [0])[0] for k in gemm), 1))
print(f"{'op':40s} {'dense':>9s} {'compact':>9s} {'diff':>8s}  calls d/c")
for k in sorted(keys, key=lambda k: -abs(c["ops"].get(k, [0, 0])[0] - d["ops"].get(k, [0, 0])[0]))[:25]:
    dv, cv = d["ops"].get(k, [0, 0]), c["ops"].get(k, [0, 0])
    print(f"{k[:40]:40s} {dv[0]:9.1f} {cv[0]:9.1f} {cv[0]-dv[0]:8.1f}  {dv[1]:.0f}/{cv[1]:.0f}")
