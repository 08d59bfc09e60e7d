import torch, time, sys, statistics
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, ".")
from onmt_sdrop.nn.lstm import reverse_padded
T, B, N = 30, 64, 2000
lengths = torch.randint(10, T + 1, (B,)); lengths[0] = T
colm = torch.randn(T, N, B).transpose(1, 2); rowm = torch.randn(T, B, N); bias = torch.randn(N)
def f(y, contig=False):
    gx = y + bias
    if contig: gx = gx.contiguous()
    gx = gx.view(T, B, 2, N // 2)
    return torch.stack([gx[:, :, 0], reverse_padded(gx[:, :, 1], lengths)], 1)
V = {"col": lambda: f(colm), "row": lambda: f(rowm), "col+contig": lambda: f(colm, True)}
res = {n: [] for n in V}
for r in range(15):
    for n, g in V.items():
        t0 = time.perf_counter(); g(); res[n].append((time.perf_counter() - t0) * 1e3)
for n, v in res.items(): print(n, round(statistics.median(v), 2), "ms")
