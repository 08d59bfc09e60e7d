# fixed cost per training step: real hidden size, tiny batch and vocabulary, interleaved rounds
import sys, time, torch, os, statistics
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(","); rounds = int(sys.argv[3])
H = int(os.environ.get("HID", 500)); V = int(os.environ.get("VOC", 100)); B = int(os.environ.get("BAT", 2))
common = cpu_bench.model_args(hidden=H, layers=2, dropout=0.3)
data = cpu_bench.batches(6, B, V)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], V) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
ts = {n: [] for n in names}
for r in range(rounds):
    for n, m in models.items():
        t0 = time.perf_counter()
        for s, t, l, _ in data: cpu_bench.train_step(m, opts[n], s, t, l)
        ts[n].append((time.perf_counter() - t0) / len(data) * 1e3)
for n in names:
    print(f"{n:18s} median {statistics.median(ts[n][1:]):7.1f} ms/step  min {min(ts[n][1:]):7.1f}")
