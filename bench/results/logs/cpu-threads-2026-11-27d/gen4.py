import torch, time, sys, statistics
torch.set_num_threads(int(sys.argv[1]))
G, B, H, k, N = 28, 64, 500, 350, 10000
L = H + k
torch.manual_seed(1)
offs = torch.randint(0, H, (G,)).tolist()
XC = torch.randn(G, k, B).transpose(1, 2); XR = torch.randn(G, B, k)
Wm = torch.randn(L, N)
xd = torch.randn(G * B, H); wd = torch.randn(N, H); bias = torch.randn(N)
keep = torch.empty(B, G, N)
def tiled(Y, X=XC, T=1024):
    Y = Y.transpose(0, 1)
    for n0 in range(0, N, T):
        for g in range(G):
            torch.mm(X[g], Wm[offs[g]:offs[g]+k, n0:n0+T], out=Y[g, :, n0:n0+T])
    return Y
V = {
 "dense addmm fresh": lambda: torch.addmm(bias, xd, wd.t()),
 "dense addmm kept": lambda: torch.addmm(bias, xd, wd.t(), out=keep.view(G * B, N)),
 "tiled1024 fresh": lambda: tiled(torch.empty(B, G, N)),
 "tiled1024 kept": lambda: tiled(keep),
 "tiled1024 xR kept": lambda: tiled(keep, XR),
 "tiled512 kept": lambda: tiled(keep, XC, 512),
 "tiled2048 kept": lambda: tiled(keep, XC, 2048),
 "tiled2500 kept": lambda: tiled(keep, XC, 2500),
}
res = {n: [] for n in V}
for f in V.values(): f()
for r in range(int(sys.argv[2])):
    for n, f in V.items():
        t0 = time.perf_counter(); f(); res[n].append((time.perf_counter() - t0) * 1e3)
base = statistics.median(res["dense addmm fresh"])
for n, v in res.items():
    m = statistics.median(v)
    print(f"  {n:22s} {m:7.1f} ms  {m/base:.2f}x dense")
