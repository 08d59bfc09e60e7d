import sys, torch, resource, time
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opts[n], s, t, l)
for rep in range(2):
  for n, m in models.items():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t0 = time.perf_counter()
    for s, t, l, _ in data[2:8]: cpu_bench.train_step(m, opts[n], s, t, l)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(f"{n:16s} minor faults/step {(f1-f0)/6:9.0f}  ({(f1-f0)/6*4/1024:.0f} MB)  {(time.perf_counter()-t0)/6*1e3:.0f} ms/step")
