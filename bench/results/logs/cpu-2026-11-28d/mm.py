import torch, time, sys
torch.set_num_threads(int(sys.argv[1]))
def t(f, n=5):
    f(); best = 1e9
    for _ in range(n):
        t0 = time.perf_counter(); f(); best = min(best, time.perf_counter() - t0)
    return best * 1e3
G, B, H, k, N = 28, 64, 500, 350, 2000
x = torch.randn(G * B, H); W = torch.randn(N, H + k)
wt = W.t().contiguous()   # (H+k, N) window-major
xc = torch.randn(G, B, k)
y = torch.empty(G, B, N)
offs = torch.randint(0, H, (G,)).tolist()
print("dense tall  [1792,500]x[500,2000]", t(lambda: torch.mm(x, wt[:H], out=y.view(-1, N))))
print("compact tall [1792,350]x[350,2000]", t(lambda: torch.mm(xc.view(-1, k), wt[:k], out=y.view(-1, N))))
def per():
    for g in range(G):
        o = offs[g]; torch.mm(xc[g], wt[o:o + k], out=y[g])
print("per-group 28x[64,350]x[350,2000]", t(per))
xcc = xc.transpose(1, 2).contiguous().transpose(1, 2)
def perc():
    for g in range(G):
        o = offs[g]; torch.mm(xcc[g], wt[o:o + k], out=y[g])
print("per-group col-major X", t(perc))
def same():
    for g in range(G):
        torch.mm(xc[g], wt[0:k], out=y[g])
print("per-group same window", t(same))
# dW
dw = torch.zeros(N, H + k); dwt = torch.zeros(H + k, N)
dy = torch.randn(G, B, N)
print("dense dW tall [2000,1792]x[1792,500]", t(lambda: torch.mm(dy.view(-1, N).t(), x)))
def dwper():
    for g in range(G):
        o = offs[g]; dwt[o:o + k].addmm_(xc[g].t(), dy[g])
print("per-group dW (window-major)", t(dwper))
order = sorted(range(G), key=lambda g: offs[g])
for c in (2, 3, 4, 7):
    clusters = [order[i:i + c] for i in range(0, G, c)]
    plans = []
    for cl in clusters:
        lo = min(offs[g] for g in cl); hi = max(offs[g] for g in cl) + k
        plans.append((cl, lo, hi))
    width = sum((hi - lo) * len(cl) for cl, lo, hi in plans) / G
    def clus():
        for cl, lo, hi in plans:
            xp = xc.new_zeros(len(cl), B, hi - lo)
            for i, g in enumerate(cl):
                xp[i, :, offs[g] - lo: offs[g] - lo + k] = xc[g]
            yy = torch.mm(xp.view(-1, hi - lo), wt[lo:hi])
            y[cl] = yy.view(len(cl), B, N)
    def clus_dw():
        for cl, lo, hi in plans:
            xp = xc.new_zeros(len(cl), B, hi - lo)
            for i, g in enumerate(cl):
                xp[i, :, offs[g] - lo: offs[g] - lo + k] = xc[g]
            dwt[lo:hi].addmm_(xp.view(-1, hi - lo).t(), dy[cl].view(-1, N))
    print(f"cluster {c}: mean width {width:.0f}", "fwd", round(t(clus), 1), "dW", round(t(clus_dw), 1))
