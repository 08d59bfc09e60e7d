import sys, time, torch, statistics, os
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(","); rounds = int(sys.argv[3])
H = int(os.environ.get("HID", 500)); V = int(os.environ.get("VOC", 10000))
common = cpu_bench.model_args(hidden=H, layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, V)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], V) for n in names}
for m in list(models.values())[1:]: torch.nn.Module.load_state_dict(m, models[names[0]].state_dict())
rec = {n: {} for n in names}
def timed(mod, key, n):
    f = mod.forward
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); rec[n].setdefault(key, []).append((time.perf_counter() - t0) * 1e3); return r
    mod.forward = g
for n, m in models.items():
    timed(m.encoder, "enc", n); timed(m.decoder, "dec", n)
for n, m in models.items():
    for s, t, l, _ in data[:2]: m(s, t, l)
    rec[n].clear()
for r in range(rounds):
    for n, m in models.items():
        for s, t, l, _ in data[2 + (r % 3) * 2: 4 + (r % 3) * 2]:
            m(s, t, l)
for n in names:
    print(n, "  ".join(f"{k} {statistics.median(v):6.1f}" for k, v in rec[n].items()))
