import sys, time, torch, statistics
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.utils._python_dispatch import TorchDispatchMode
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
GEMM = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default,
        torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.out}
class T(TorchDispatchMode):
    def __init__(self): super().__init__(); self.t = 0.0; self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMM:
            t0 = time.perf_counter(); r = func(*args, **(kwargs or {})); self.t += time.perf_counter() - t0; self.n += 1
            return r
        return func(*args, **(kwargs or {}))
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000) for n in names}
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
for n, m in models.items():
    for s, t, l, _ in data[:2]: cpu_bench.train_step(m, opts[n], s, t, l)
res = {n: {"wall": [], "gemm": []} for n in names}
for r in range(int(sys.argv[3])):
    for n, m in models.items():
        s, t, l, _ = data[2 + r % 4]
        t0 = time.perf_counter(); cpu_bench.train_step(m, opts[n], s, t, l); res[n]["wall"].append(time.perf_counter() - t0)
        mode = T()
        with mode:
            cpu_bench.train_step(m, opts[n], s, t, l)
        res[n]["gemm"].append(mode.t)
for n in names:
    w = sum(res[n]["wall"]) / len(res[n]["wall"]) * 1e3; g = sum(res[n]["gemm"]) / len(res[n]["gemm"]) * 1e3
    print(f"{n:16s} wall {w:7.0f}  gemm {g:7.0f}  rest {w-g:7.0f} ms")
