import torch, time
from onmt_sdrop.ops.common import transpose_copy
torch.set_num_threads(1)
V, H, k = 10000, 500, 350
w = torch.randn(V, H)
idx = torch.cat([torch.randperm(H), torch.arange(k)])
idx = torch.cat([torch.randperm(H)]); idx = torch.cat([idx, idx[:k]])
wt = torch.empty(H, V); ext = torch.empty(H + k, V)
def cur():
    transpose_copy(wt, w); torch.index_select(wt, 0, idx, out=ext)
def merged():
    torch.index_select(w.t(), 0, idx, out=ext)
def blocked():
    for j in range(0, V, 512):
        torch.index_select(w[j:j+512].t(), 0, idx, out=ext[:, j:j+512]) if False else ext[:, j:j+512].copy_(w[j:j+512].t().index_select(0, idx))
cur(); ref = ext.clone(); merged(); assert torch.equal(ext, ref); blocked(); assert torch.equal(ext, ref)
# backward direction
by_row = torch.randn(H, V); inv = torch.argsort(idx[:H])
dw = torch.empty(V, H); dwt = torch.empty(H, V)
def bcur():
    torch.index_select(by_row, 0, inv, out=dwt); transpose_copy(dw, dwt)
def bmerged():
    torch.index_select(by_row, 0, inv, out=dw.t())
bcur(); r2 = dw.clone(); bmerged(); assert torch.equal(dw, r2), "bmerged differs"
print(dw.is_contiguous(), dw.stride())
ts = {f.__name__: [] for f in (cur, merged, blocked, bcur, bmerged)}
for _ in range(7):
    for f in (cur, merged, blocked, bcur, bmerged):
        t0 = time.perf_counter(); f(); ts[f.__name__].append(time.perf_counter() - t0)
for n, v in ts.items(): print(n, "min %.1f med %.1f ms" % (min(v)*1e3, sorted(v)[3]*1e3))
