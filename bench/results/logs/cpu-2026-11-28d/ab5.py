# interleaved A/B of whole training steps; variant "base@mod.ATTR=val@ENV" sets attributes of
NOTP = lambda d, s: d
# onmt_sdrop.ops.<mod> (or env vars) during that variant's steps
import sys, time, torch, statistics, os, importlib
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
per = int(sys.argv[4]) if len(sys.argv) > 4 else 3
common = cpu_bench.model_args(hidden=int(os.environ.get("HID", 500)), layers=2, dropout=0.3)
data = cpu_bench.batches(2 + per * 4, 64, 10000)
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n.split('@')[0]], 10000) for n in names}
for n, m in list(models.items())[1:]: torch.nn.Module.load_state_dict(m, models[names[0]].state_dict())
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
def setting(n):
    undo = []
    for kv in n.split('@')[1:]:
        k, v = kv.split('=') if '=' in kv else (kv, '1')
        if '.' in k:
            mod, attr = k.rsplit('.', 1)
            mod = importlib.import_module('onmt_sdrop.ops.' + mod)
            old = getattr(mod, attr); new = eval(v); setattr(mod, attr, new if callable(new) else type(old)(new))
            undo.append(lambda mod=mod, attr=attr, old=old: setattr(mod, attr, old))
        else:
            os.environ[k] = v; undo.append(lambda k=k: os.environ.pop(k))
    return undo
for n, m in models.items():
    u = setting(n)
    for s, t, l, _ in data[:2]:
        cpu_bench.train_step(m, opts[n], s, t, l)
    for f in u: f()
ratios = {n: [] for n in names}; tot = {n: 0.0 for n in names}
for r in range(rounds):
    chunk = data[2 + (r % 4) * per: 2 + (r % 4 + 1) * per]
    sec = {}
    for n, m in models.items():
        u = setting(n)
        t0 = time.perf_counter()
        for s, t, l, _ in chunk:
            cpu_bench.train_step(m, opts[n], s, t, l)
        sec[n] = time.perf_counter() - t0
        for f in u: f()
        tot[n] += sec[n]
    for n in names:
        ratios[n].append(sec[names[0]] / sec[n])
for n in names:
    rs = sorted(ratios[n])
    print(f"{n:40s} {tot[n]/rounds/per*1e3:7.0f} ms/step  total x{tot[names[0]]/tot[n]:.3f}  median x{statistics.median(rs):.3f}  range {rs[0]:.3f}-{rs[-1]:.3f}")
