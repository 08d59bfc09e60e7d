import sys, time, torch, os
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(int(sys.argv[1]))
n = sys.argv[2]; ops = sys.argv[3].split(",")
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opt, s, t, l)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for k in range(3):
        s, t, l, _ = data[2 + k]
        cpu_bench.train_step(m, opt, s, t, l)
for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total):
    if e.key in ops and e.self_cpu_time_total > 3e3:
        print(f"{e.key:20s} {e.self_cpu_time_total/3e3:7.1f} ms {e.count/3:6.0f}  {str(e.input_shapes)[:110]}")
