import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
V, H, K = 10000, 500, 350
w = torch.randn(V, H)
idx = torch.cat([torch.randperm(H), torch.randperm(H)[:K]])
t = torch.empty(H, V); ext = torch.empty(H + K, V); tmpv = torch.empty(V, H + K)
def a(): t.copy_(w.t()); torch.index_select(t, 0, idx, out=ext)
def mk(B):
    def f1():
        for j in range(0, V, B): t[:, j:j+B].copy_(w[j:j+B].t())
        torch.index_select(t, 0, idx, out=ext)
    def f2():
        for j in range(0, V, B): ext[:, j:j+B].copy_(torch.index_select(w[j:j+B], 1, idx).t())
    def f3():
        torch.index_select(w, 1, idx, out=tmpv)
        for j in range(0, V, B): ext[:, j:j+B].copy_(tmpv[j:j+B].t())
    return f1, f2, f3
fns = {"a": a}
for B in (256, 512, 1024):
    f1, f2, f3 = mk(B); fns[f"f1_{B}"] = f1; fns[f"f2_{B}"] = f2; fns[f"f3_{B}"] = f3
res = {k: [] for k in fns}
for r in range(int(sys.argv[2])):
    for k, f in fns.items():
        t0 = time.perf_counter(); f(); res[k].append(time.perf_counter() - t0)
for k, v in res.items():
    v.sort(); print(f"{k:8s} median {v[len(v)//2]*1e3:7.2f} ms  min {v[0]*1e3:7.2f}")
