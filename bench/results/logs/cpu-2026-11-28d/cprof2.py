import sys, cProfile, pstats, torch, collections
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
for name in sys.argv[2].split(","):
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[name], 10000)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
    pr = cProfile.Profile(); pr.enable()
    for s, t, l, _ in data[2:5]: cpu_bench.train_step(m, opt, s, t, l)
    pr.disable()
    st = pstats.Stats(pr).stats
    by = collections.Counter(); calls = collections.Counter()
    for (f, ln, fn), (cc, nc, tt, ct, callers) in st.items():
        key = "onmt_sdrop" if "onmt_sdrop" in f else ("onmt" if "/onmt/" in f else ("torch-py" if "torch" in f else f if f != "~" else fn))
        by[key] += tt / 3 * 1e3; calls[key] += nc / 3
    print("=====", name)
    for k, v in by.most_common(25): print(f"{v:8.1f} ms {calls[k]:8.0f} calls  {k[:90]}")
