import sys, torch, os, cProfile, pstats, time
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(1)
H = int(os.environ.get("HID", 500)); V = int(os.environ.get("VOC", 10000))
common = cpu_bench.model_args(hidden=H, layers=2, dropout=0.3)
data = cpu_bench.batches(5, 64, V)
for n in sys.argv[1].split(","):
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], V)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
    pr = cProfile.Profile()
    pr.enable()
    for s, t, l, _ in data[2:5]: cpu_bench.train_step(m, opt, s, t, l)
    pr.disable()
    st = pstats.Stats(pr)
    py = {k: v for k, v in st.stats.items() if not k[0].startswith("~") and "{" not in k[2]}
    ours = sum(v[2] for k, v in py.items() if "/onmt_sdrop/" in k[0]) / 3
    onmt = sum(v[2] for k, v in py.items() if "/onmt/" in k[0]) / 3
    torchpy = sum(v[2] for k, v in py.items() if "/torch/" in k[0]) / 3
    calls = sum(v[1] for v in st.stats.values()) / 3
    print(f"{n}: python tottime per step: onmt_sdrop {ours*1e3:.1f} ms, onmt {onmt*1e3:.1f}, torch-py {torchpy*1e3:.1f}; calls/step {calls:.0f}; total {st.total_tt/3*1e3:.0f} ms")
    top = sorted(((v[2], k) for k, v in py.items() if "/onmt_sdrop/" in k[0]), reverse=True)[:8]
    for tt, k in top: print(f"   {tt/3*1e3:6.1f} ms  {k[0].split('onmt_sdrop/')[-1]}:{k[1]} {k[2]}")
