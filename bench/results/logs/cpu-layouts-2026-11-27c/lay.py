import torch, time, itertools, sys
torch.set_num_threads(int(sys.argv[1]))
def t(f, n=20):
    f(); f()
    best = []
    for rep in range(3):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t0) / n * 1e3)
    return min(best)
def mat(r, c, layout):
    return torch.randn(r, c) if layout == "R" else torch.randn(c, r).t()
def bench(m, k, n, label):
    res = {}
    for la, lb, lc in itertools.product("RC", repeat=3):
        a, b, c = mat(m, k, la), mat(k, n, lb), mat(m, n, lc)
        res[la + lb + lc] = t(lambda: torch.mm(a, b, out=c))
    best = sorted(res.items(), key=lambda kv: kv[1])
    print(label, " ".join(f"{k}:{v:.2f}" for k, v in best))
B, k, H = 64, 350, 500
for N in (2000, 10000):
    bench(B, k, N, f"fwd   64x350x{N}  ")
    bench(B, N, k, f"dx    64x{N}x350  ")
    bench(k, B, N, f"dW    350x64x{N}  ")
    bench(B, H, N, f"dense fwd 64x500x{N}")
    bench(1792, H, N, f"dense fwd tall/28 1792x500x{N}")
