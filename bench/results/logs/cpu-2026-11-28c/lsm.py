import torch, time, sys
torch.set_num_threads(int(sys.argv[1]))
x = torch.randn(1792, 10000)
y = torch.log_softmax(x, -1)
g = torch.randn_like(x)
out = torch.empty_like(x)
def t(f, n=8):
    f(); ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return min(ts)*1e3, sorted(ts)[n//2]*1e3
print("fwd fresh", t(lambda: torch.log_softmax(x, -1)))
print("fwd out  ", t(lambda: torch._log_softmax(x, -1, False, out=out)))
print("bwd fresh", t(lambda: torch._log_softmax_backward_data(g, y, -1, x.dtype)))
print("bwd out  ", t(lambda: torch._log_softmax_backward_data(g, y, -1, x.dtype, out=out)))
print("zeros    ", t(lambda: torch.zeros(1792, 10000)))
print("zero_    ", t(lambda: out.zero_()))
