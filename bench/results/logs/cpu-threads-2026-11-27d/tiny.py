import sys, time, torch, statistics
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
H, V, Bt = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
names = ["sdrop_dense", "sdrop_compact", "stock"]
common = cpu_bench.model_args(hidden=H, layers=2, dropout=0.3)
data = cpu_bench.batches(8, Bt, V)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], V) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]:
        cpu_bench.train_step(m, opts[n], s, t, l)
tot = {n: [] for n in names}
for r in range(4):
    for n, m in models.items():
        t0 = time.perf_counter()
        for s, t, l, _ in data[2:]:
            cpu_bench.train_step(m, opts[n], s, t, l)
        tot[n].append((time.perf_counter() - t0) / len(data[2:]) * 1e3)
print("steps", [t.shape[1] for _, t, _, _ in data[2:]])
for n in names: print(f"{n:16s} {statistics.median(tot[n]):7.1f} ms/step")
