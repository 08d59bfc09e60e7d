import torch, concurrent.futures
from torch.profiler import profile, ProfilerActivity
pool = concurrent.futures.ThreadPoolExecutor(1)
a = torch.randn(200, 200)
pool.submit(lambda: a @ a).result()
with profile(activities=[ProfilerActivity.CPU]) as p:
    pool.submit(lambda: [torch.mm(a, a) for _ in range(5)]).result()
    torch.addmm(a, a, a)
print({e.key: e.count for e in p.key_averages()})
