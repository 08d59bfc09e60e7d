import sys, time, torch, resource
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]:
        cpu_bench.train_step(m, opts[n], s, t, l)
sec = {n: 0.0 for n in names}; flt = {n: 0 for n in names}
for r in range(rounds):
    for n, m in models.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for s, t, l, _ in data[2:]:
            cpu_bench.train_step(m, opts[n], s, t, l)
        sec[n] += time.perf_counter() - t0
        flt[n] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
steps = rounds * (len(data) - 2)
base = names[0]
for n in names:
    print(f"{n:18s} {sec[n]/steps*1e3:7.0f} ms/step  x{sec[base]/sec[n]:.3f} vs {base}  faults/step {flt[n]//steps}")
