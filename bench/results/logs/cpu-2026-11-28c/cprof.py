import sys, cProfile, pstats, torch
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[sys.argv[2]], 10000)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
pr = cProfile.Profile()
pr.enable()
for s, t, l, _ in data[2:5]: cpu_bench.train_step(m, opt, s, t, l)
pr.disable()
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(int(sys.argv[3]))
