import torch, time, sys
torch.set_num_threads(int(sys.argv[1]))
def t(f, n=3):
    f()
    best = []
    for rep in range(3):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t0) / n * 1e3)
    return min(best)
G, B, H, k, N = 28, 64, 500, 350, 10000
L = H + k
offs = torch.randint(0, H, (G,)).tolist()
XR = torch.randn(G, B, k); XC = torch.randn(G, k, B).transpose(1, 2)
dY = torch.randn(B, G, N).transpose(0, 1)   # batch-major grads as from _BatchMajor
Wm = torch.randn(L, N)
xd = torch.randn(G * B, H); wd = torch.randn(N, H); dyd = torch.randn(G * B, N)
dense = {"fwd": t(lambda: torch.mm(xd, wd.t())), "dx": t(lambda: torch.mm(dyd, wd)),
         "dW": t(lambda: torch.mm(dyd.t(), xd))}
print("dense", {a: round(b, 1) for a, b in dense.items()})
res = {}
for T in (512, 1024, 2048, 10000):
    for xn, X in (("R", XR), ("C", XC)):
        Y = torch.empty(G, B, N)
        res[f"fwd tile {T} x={xn} y=R"] = t(lambda: [torch.mm(X[g], Wm[offs[g]:offs[g]+k, n0:n0+T], out=Y[g, :, n0:n0+T]) for n0 in range(0, N, T) for g in range(G)]) / dense["fwd"]
        gw = torch.zeros(L, N)
        res[f"dW  tile {T} x={xn}"] = t(lambda: [gw[offs[g]:offs[g]+k, n0:n0+T].addmm_(X[g].t(), dY[g][:, n0:n0+T]) for n0 in range(0, N, T) for g in range(G)]) / dense["dW"]
    for dn in "RC":
        D = torch.zeros(G, B, k) if dn == "R" else torch.zeros(G, k, B).transpose(1, 2)
        def dx():
            D.zero_()
            for n0 in range(0, N, T):
                for g in range(G):
                    D[g].addmm_(dY[g][:, n0:n0+T], Wm[offs[g]:offs[g]+k, n0:n0+T].t())
        res[f"dx  tile {T} dx={dn}"] = t(dx) / dense["dx"]
for key, v in sorted(res.items(), key=lambda kv: (kv[0][:3], kv[1])):
    print(f"  {key:28s} {v:.2f}x dense")
