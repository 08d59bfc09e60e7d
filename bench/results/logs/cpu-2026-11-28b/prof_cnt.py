import sys, time, torch, collections
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opts[n], s, t, l)
for n, m in models.items():
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for k in range(3):
            s, t, l, _ = data[2 + k]
            cpu_bench.train_step(m, opts[n], s, t, l)
    print("=====", n)
    rows = [e for e in prof.key_averages(group_by_input_shape=True)]
    rows.sort(key=lambda e: -e.self_cpu_time_total)
    for e in rows[:int(sys.argv[3])]:
        print(f"{e.key[:24]:24s} {e.self_cpu_time_total/3e3:7.1f} ms {e.count/3:6.1f} x {e.self_cpu_time_total/max(e.count,1):8.0f}us  {str(e.input_shapes)[:90]}")
