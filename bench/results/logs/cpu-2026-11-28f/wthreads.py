import concurrent.futures, time, torch, os
torch.set_num_threads(2)
pool = concurrent.futures.ThreadPoolExecutor(1)
print("main before:", torch.get_num_threads())
torch.set_num_threads(1)
print("worker sees:", pool.submit(torch.get_num_threads).result())
a = torch.randn(64, 350); b = torch.randn(350, 2000)
def bench():
    for _ in range(20): a @ b
    t = time.perf_counter()
    for _ in range(400): a @ b
    return (time.perf_counter() - t) / 400 * 1e6
print("main 1 thread us/GEMM", round(bench()))
print("worker us/GEMM", round(pool.submit(bench).result()))
torch.set_num_threads(2)
print("main 2 threads us/GEMM", round(bench()))
