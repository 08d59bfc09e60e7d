import sys, time, torch
from onmt_sdrop.masks import sample_step_mask
from onmt_sdrop.ops import torch_backend as tb, common
torch.set_num_threads(int(sys.argv[1]))
H, V, G, B = int(sys.argv[2]), int(sys.argv[3]), 28, 64
def best(f, n=7):
    f(); r = 1e9
    for _ in range(n):
        t0 = time.perf_counter(); f(); r = min(r, time.perf_counter() - t0)
    return r * 1e3
m = sample_step_mask(G, H, 0.3, generator=torch.Generator().manual_seed(0))
w = torch.randn(V, H) * 0.05
x = torch.randn(G, B, H)
ww = tb.permute_weight(w, m, 1)
xc = tb.gather(x, m)
dy = torch.randn(G, B, V)
dyb = torch.randn(B, G, V).transpose(0, 1)   # batch-major, as the loss gives
ext = ww.ext
dw = torch.zeros(ext.shape[::-1]).t()
k = m.kmax
print("H", H, "V", V, "k", k, "tiles", len(tb._column_tiles(xc, V, m)))
print("permute_weight        %.1f" % best(lambda: tb.permute_weight(w, m, 1)))
print("consumer_fwd          %.1f" % best(lambda: tb.consumer_fwd(xc, ext, m)))
print("consumer_dx           %.1f" % best(lambda: tb.consumer_dx(dyb, ext, m)))
print("consumer_dw           %.1f" % best(lambda: tb.consumer_dw(dyb, xc, m, dw)))
xd = torch.randn(G * B, H); wt = w.t().contiguous()
print("dense fwd mm          %.1f" % best(lambda: torch.mm(xd, w.t())))
dyd = torch.randn(G * B, V)
print("dense dx              %.1f" % best(lambda: torch.mm(dyd, w)))
print("dense dw              %.1f" % best(lambda: torch.mm(dyd.t(), xd)))
# raw tile GEMMs with no python in between (same calls, prebuilt views)
tiles = tb._column_tiles(xc, V, m)
y = torch.empty(B, G, V).transpose(0, 1)
views = [(y[g][:, c], xc[g][:, :kk], ext[c][:, o:o + kk].t()) for c in tiles for g, (o, kk) in enumerate(m.windows)]
def raw():
    for out, a, b in views: torch.mm(a, b, out=out)
print("raw fwd tile mms      %.1f  (%d calls)" % (best(raw), len(views)))
