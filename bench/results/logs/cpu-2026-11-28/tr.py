import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
V, H, K = 10000, 500, 350
w = torch.randn(V, H)
idx = torch.cat([torch.randperm(H), torch.randperm(H)[:K]])
inv = torch.argsort(torch.randperm(H))
t = torch.empty(H, V); ext = torch.empty(H + K, V); out = torch.empty(V, H)
grad_rows = torch.randn(H + K, V)   # window-major grad (ext rows)
def a(): t.copy_(w.t()); torch.index_select(t, 0, idx, out=ext)
def b(): torch.index_select(w.t(), 0, idx, out=ext)
def c(): ext.copy_(torch.index_select(w, 1, idx).t())
def d():
    for j in range(0, H, 64): t[j:j+64].copy_(w[:, j:j+64].t())
    torch.index_select(t, 0, idx, out=ext)
def e():   # blocked gather + transpose, rows of ext in blocks
    for j in range(0, H + K, 64):
        ext[j:j+64].copy_(torch.index_select(w, 1, idx[j:j+64]).t())
# grad side: from by_row (H rows used) to contiguous (V, H)
gb = grad_rows[:H]
tmp = torch.empty(H, V)
def g1(): torch.index_select(gb, 0, inv, out=tmp); out.copy_(tmp.t())
def g2(): torch.index_select(gb.t(), 1, inv, out=out)
def g3():
    torch.index_select(gb, 0, inv, out=tmp)
    for j in range(0, V, 512): out[j:j+512].copy_(tmp[:, j:j+512].t())
def g4():
    for j in range(0, V, 512): torch.index_select(gb[:, j:j+512].t(), 1, inv, out=out[j:j+512])
fns = dict(a=a, b=b, c=c, d=d, e=e, g1=g1, g2=g2, g3=g3, g4=g4)
res = {k: [] for k in fns}
for r in range(int(sys.argv[2])):
    for k, f in fns.items():
        t0 = time.perf_counter(); f(); res[k].append(time.perf_counter() - t0)
for k, v in res.items():
    v.sort(); print(f"{k:3s} median {v[len(v)//2]*1e3:7.2f} ms  min {v[0]*1e3:7.2f}")
