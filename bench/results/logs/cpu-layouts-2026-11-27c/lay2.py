"""Per-step loops of the consumer GEMMs with real windows, layout variants, vs dense tall."""
import torch, time, sys
torch.set_num_threads(int(sys.argv[1]))
def t(f, n=4):
    f()
    best = []
    for rep in range(3):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t0) / n * 1e3)
    return min(best)
G, B, H = 28, 64, 500
k = 350; L = H + k
offs = torch.randint(0, H, (G,)).tolist()
def store(shape, perm):   # a tensor of logical `shape` stored with dims in order `perm`
    s = [shape[p] for p in perm]
    inv = [perm.index(i) for i in range(len(shape))]
    return torch.randn(s).permute(inv)
for N in (2000, 10000):
    X = {"R": store((G, B, k), (0, 1, 2)), "C": store((G, B, k), (0, 2, 1))}
    dY = torch.randn(G, B, N)
    W = {"wm": torch.randn(L, N), "nm": torch.randn(N, L)}   # window-major (rows=units) / not
    def win(wl, o):   # (N, k) window
        return W[wl][o:o + k].t() if wl == "wm" else W[wl][:, o:o + k]
    res = {}
    for wl in ("wm", "nm"):
        for xl in "RC":
            for ol in "RC":
                Y = store((G, B, N), (0, 1, 2) if ol == "R" else (0, 2, 1))
                res[f"fwd w={wl} x={xl} y={ol}"] = t(lambda: [torch.mm(X[xl][g], win(wl, offs[g]).t(), out=Y[g]) for g in range(G)])
        for ol in "RC":
            D = store((G, B, k), (0, 1, 2) if ol == "R" else (0, 2, 1))
            res[f"dx  w={wl} dx={ol}"] = t(lambda: [torch.mm(dY[g], win(wl, offs[g]), out=D[g]) for g in range(G)])
        for xl in "RC":
            gw = torch.zeros_like(W[wl])
            def dw():
                for g in range(G):
                    o = offs[g]
                    if wl == "wm":
                        gw[o:o + k].addmm_(X[xl][g].t(), dY[g])
                    else:
                        gw[:, o:o + k].addmm_(dY[g].t(), X[xl][g])
            res[f"dW  w={wl} x={xl}"] = t(dw)
    xd = torch.randn(G * B, H); wd = torch.randn(N, H); dyd = torch.randn(G * B, N)
    dense = {"fwd": t(lambda: torch.mm(xd, wd.t())), "dx": t(lambda: torch.mm(dyd, wd)),
             "dW": t(lambda: torch.mm(dyd.t(), xd))}
    print(f"N={N} dense tall: " + " ".join(f"{a} {b:.1f}" for a, b in dense.items()))
    for key, v in sorted(res.items(), key=lambda kv: (kv[0][:3], kv[1])):
        print(f"  {key:28s} {v:7.1f} ms  {v / dense[key[:3].strip()]:.2f}x dense")
