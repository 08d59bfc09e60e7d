import sys, time, torch
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
OPS = sys.argv[3].split(",") if len(sys.argv) > 3 else ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
for name in names:
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[name], 10000)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s, t, l, _ in data[:3]:
        cpu_bench.train_step(m, opt, s, t, l)
    s, t, l, _ = data[2]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        cpu_bench.train_step(m, opt, s, t, l)
    print(name, "T", t.shape)
    ka = prof.key_averages(group_by_input_shape=True)
    rows = sorted([e for e in ka if e.key in OPS], key=lambda e: -e.self_cpu_time_total)
    tot = 0
    for e in rows[:25]:
        print(f"  {e.key:14s} {e.count:4d} {e.self_cpu_time_total/1e3:8.1f} ms  {e.input_shapes}")
    print("  gemm total", round(sum(e.self_cpu_time_total for e in rows) / 1e3, 1))
