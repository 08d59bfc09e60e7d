import torch, time, threading, concurrent.futures as cf, sys
torch.set_num_threads(2)
K = int(sys.argv[1]) if len(sys.argv) > 1 else 350
xs = [torch.randn(64, K) for _ in range(14)]
w = torch.randn(2000, K)
outs = [torch.empty(64, 2000) for _ in range(14)]
pool = cf.ThreadPoolExecutor(1)
def work(tag, res):
    t = time.perf_counter()
    with torch.no_grad():
        for r in range(5):
            for x, o in zip(xs, outs):
                torch.mm(x, w.t(), out=o)
    res[tag] = time.perf_counter() - t
for rep in range(4):
    res = {}
    torch.set_num_threads(1)
    work("alone-main", res); pool.submit(work, "alone-worker", res).result()
    t0 = time.perf_counter()
    f = pool.submit(work, "worker", res)
    work("main", res)
    f.result()
    tot = time.perf_counter() - t0
    torch.set_num_threads(2)
    t0 = time.perf_counter(); work("mkl2", res); work("mkl2b", res); mk = time.perf_counter() - t0
    print({k: round(v*1e3, 1) for k, v in res.items()}, "sbs total", round(tot*1e3, 1), "mkl2 total", round(mk*1e3,1))
