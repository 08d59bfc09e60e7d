import torch, time, sys, statistics
from concurrent.futures import ThreadPoolExecutor
torch.set_num_threads(2)
G, B, H, k, N = 28, 64, 500, 350, 10000
L = H + k
torch.manual_seed(1)
offs = torch.randint(0, H, (G,)).tolist()
XR = torch.randn(G, B, k)
Wm = torch.randn(L, N)
xd = torch.randn(G * B, H); wd = torch.randn(N, H); bias = torch.randn(N)
keep = torch.empty(B, G, N)
pool = ThreadPoolExecutor(2)
def tiles(Y, ts, T=1024):
    for n0 in ts:
        for g in range(G):
            torch.mm(XR[g], Wm[offs[g]:offs[g]+k, n0:n0+T], out=Y[g, :, n0:n0+T])
def tiled(Y):
    tiles(Y.transpose(0, 1), range(0, N, 1024))
def par(Y):
    Y = Y.transpose(0, 1)
    torch.set_num_threads(1)
    try:
        fs = [pool.submit(tiles, Y, range(0, 5120, 1024)), pool.submit(tiles, Y, range(5120, N, 1024))]
        for f in fs: f.result()
    finally:
        torch.set_num_threads(2)
def par_steps(Y):
    Y = Y.transpose(0, 1)
    torch.set_num_threads(1)
    def run(gs):
        for n0 in range(0, N, 1024):
            for g in gs:
                torch.mm(XR[g], Wm[offs[g]:offs[g]+k, n0:n0+1024], out=Y[g, :, n0:n0+1024])
    try:
        fs = [pool.submit(run, range(0, G, 2)), pool.submit(run, range(1, G, 2))]
        for f in fs: f.result()
    finally:
        torch.set_num_threads(2)
V = {"dense kept": lambda: torch.addmm(bias, xd, wd.t(), out=keep.view(G * B, N)),
     "tiled": lambda: tiled(keep), "par tiles": lambda: par(keep), "par steps": lambda: par_steps(keep)}
res = {n: [] for n in V}
for f in V.values(): f()
ref = keep.clone(); tiled(keep); ref = keep.clone(); keep.zero_(); par(keep); print("same", torch.equal(ref, keep))
for r in range(int(sys.argv[1])):
    for n, f in V.items():
        t0 = time.perf_counter(); f(); res[n].append((time.perf_counter() - t0) * 1e3)
base = statistics.median(res["dense kept"])
for n, v in res.items():
    m = statistics.median(v); print(f"  {n:14s} {m:7.1f} ms  {m/base:.2f}x dense")
