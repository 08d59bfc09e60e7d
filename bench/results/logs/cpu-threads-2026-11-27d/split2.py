import sys, time, torch, collections
sys.path.insert(0, "/work/main/bench")
import cpu_bench
from torch.utils._python_dispatch import TorchDispatchMode
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
GEMM = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default,
        torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.out}
class T(TorchDispatchMode):
    def __init__(self): super().__init__(); self.t = collections.defaultdict(lambda: [0, 0.0])
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMM:
            t0 = time.perf_counter(); r = func(*args, **(kwargs or {})); dt = time.perf_counter() - t0
            ts = [a for a in args if isinstance(a, torch.Tensor)]
            key = (func.__name__, tuple(tuple(a.shape) for a in ts[-2:] if a.dim() >= 2), tuple(a.stride()[-1] == 1 for a in ts[-2:]))
            self.t[key][0] += 1; self.t[key][1] += dt
            return r
        return func(*args, **(kwargs or {}))
common = cpu_bench.model_args(hidden=500, layers=2, dropout=0.3)
data = cpu_bench.batches(6, 64, 10000)
for n in names:
    m = cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], 10000)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s, t, l, _ in data[:3]: cpu_bench.train_step(m, opt, s, t, l)
    mode = T()
    s, t, l, _ = data[2]
    for r in range(2):
        with mode: cpu_bench.train_step(m, opt, s, t, l)
    print(n, "total", round(sum(v[1] for v in mode.t.values()) / 2 * 1e3))
    for k, v in sorted(mode.t.items(), key=lambda kv: -kv[1][1])[:22]:
        print(f"   {v[1]/2*1e3:7.1f} ms {v[0]//2:4d}x {k}")
