import sys, cProfile, pstats, torch, os
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(1)
H = int(os.environ.get("HID", 256)); V = int(os.environ.get("VOC", 8000))
common = cpu_bench.model_args(hidden=H, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, V)
for name in sys.argv[1].split(","):
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[name], V)
    for s, t, l, _ in data[:2]: m(s, t, l)
    pr = cProfile.Profile(); pr.enable()
    for s, t, l, _ in data[2:5]: m(s, t, l)
    pr.disable()
    print("=====", name)
    pstats.Stats(pr).sort_stats("tottime").print_stats(int(sys.argv[2]))
