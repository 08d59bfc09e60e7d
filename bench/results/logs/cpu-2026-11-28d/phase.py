import sys, time, torch, statistics
sys.path.insert(0, "/work/main/bench")
import cpu_bench
torch.set_num_threads(int(sys.argv[1]))
names = sys.argv[2].split(",")
rounds = int(sys.argv[3])
common = cpu_bench.model_args(hidden=int(__import__("os").environ.get("HID", 500)), layers=2, dropout=0.3)
data = cpu_bench.batches(8, 64, int(__import__("os").environ.get("VOC", 10000)))
models = {n: cpu_bench.build_variant(common + cpu_bench.VARIANTS[n], int(__import__("os").environ.get("VOC", 10000))) for n in names}
for m in list(models.values())[1:]: torch.nn.Module.load_state_dict(m, models[names[0]].state_dict())
opts = {n: torch.optim.SGD(m.parameters(), lr=0.1) for n, m in models.items()}
def step(m, o, src, tgt, sl, rec):
    t = [time.perf_counter()]
    out, _ = m(src, tgt, sl); t.append(time.perf_counter())
    logits = m.generator(out.reshape(-1, out.shape[-1])); t.append(time.perf_counter())
    gold = tgt[:, 1:, 0].reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.float(), gold, ignore_index=1, reduction="sum"); t.append(time.perf_counter())
    o.zero_grad(set_to_none=True)
    (loss / src.shape[0]).backward(); t.append(time.perf_counter())
    o.step(); t.append(time.perf_counter())
    for k, nm in enumerate(["model", "gen", "loss", "bwd", "optim"]):
        rec.setdefault(nm, []).append((t[k+1]-t[k])*1e3)
for n, m in models.items():
    for s, t, l, _ in data[:2]: step(m, opts[n], s, t, l, {})
recs = {n: {} for n in names}
for r in range(rounds):
    for n, m in models.items():
        for s, t, l, _ in data[2 + (r % 3) * 2: 4 + (r % 3) * 2]:
            step(m, opts[n], s, t, l, recs[n])
for n in names:
    print(n, "  ".join(f"{k} {statistics.median(v):6.0f}" for k, v in recs[n].items()), " total", round(sum(statistics.median(v) for v in recs[n].values())))
