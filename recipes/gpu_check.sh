#!/usr/bin/env bash
# Issue 11, in one device call of at most 8 minutes: Multi30k En-De with the full-size model
# (OpenNMT-py defaults: 2x500 bi-LSTM encoder, input-feed decoder, general attention, dropout 0.3;
# profile gpu-converge: Adam 1e-3, 128 sentences a batch, 800 steps, 2 DataLoader workers),
# the stock baseline against sdrop (default backend: auto), two seeds per model, greedy valid BLEU
# at every checkpoint (BLEU against wall-clock time), then a --time-budget run (both models get the
# same minutes), and one report over the seeds.
#
#   here:    ../shared/tools/gpu-wheels.sh                  (OpenNMT-py etc. into .whl/)
#            bash recipes/gpu_check.sh --stage-data         (Multi30k into recipes/work/gpu-data/)
#   device:  run(command="bash recipes/gpu_check.sh", carry=[".whl", "recipes/work/gpu-data"],
#                timeout_s=540)
#   CPU:     bash recipes/gpu_check.sh --dry-run            (tiny model on the bundled sample; tests)
#
# Writes under $OUT (default recipes/results/multi30k-ende-gpu) after each stage: device.txt,
# seed1/ and seed2/ (report.md, summary.json, PNGs, evidence/), budget/, and report.md +
# summary.json + bleu_time.png over the seeds; every stage's output in *.log there.
# The two seeds of a model train at the same time on the one GPU (two processes; the step is
# launch-bound, so they share it with little loss): this is what fits two seeds into 8 minutes.
# Sizes (env): STEPS (default 800), BUDGET_MIN (0.5), TOTAL_S (a deadline for the whole script,
# default 470 s), EXTRA (more onmt_train options for both models). Estimate from the one GPU run
# so far (H200, stock ~70 ms/step, sdrop ~160 ms/step at batch 64, launch-bound): ~20 s wheels
# and data, ~330 s for the seeds (sdrop's 800 steps, validations, translations), ~120 s for the
# budget run; the budget run is skipped, saying so, when too little time is left for it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
t0=$(date +%s)
mode=gpu
case "${1:-}" in
  -h|--help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
  --stage-data)
    mkdir -p recipes/work/gpu-data
    cp "${MULTI30K_ENDE_RAW:-$root/../shared/data/multi30k-ende}"/{train,valid,test2016}.{en,de}.xz \
      recipes/work/gpu-data/ && ls -la recipes/work/gpu-data; exit $? ;;
  --dry-run) mode=dry ;;
  "") ;;
  *) echo "gpu_check.sh: error: unknown option $1 (--help)" >&2; exit 2 ;;
esac

if [ "$mode" = gpu ]; then
  OUT=${OUT:-recipes/results/multi30k-ende-gpu}
  pair=multi30k-ende profile=gpu-converge raw=${RAW:-recipes/work/gpu-data}
  steps=${STEPS:-800} budget=${BUDGET_MIN:-0.5} total=${TOTAL_S:-470}
  opts=--gpu   # the profile turns on the greedy valid BLEU
  py=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { echo "gpu_check.sh: error: no wheels in .whl/ (../shared/tools/gpu-wheels.sh)" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  OUT=${OUT:-$(mktemp -d)/gpu-dry-run}
  pair=sample-deen profile=tiny raw=data/iwslt14-sample
  steps=${STEPS:-10} budget=${BUDGET_MIN:-0.0001} total=${TOTAL_S:-400} opts=--valid-bleu
  py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
work=${GPU_WORK:-recipes/work/gpu-check-$mode}
mkdir -p "$OUT" "$work"
left() { echo $(( total - ($(date +%s) - t0) )); }
pipe() {  # pipeline options...: one run, stopped at the script's deadline
  local s; s=$(left)
  [ "$s" -gt 5 ] || { echo "gpu_check.sh: no time left for: $*" >&2; return 124; }
  timeout --signal=INT --kill-after=10 "$s" "$py" -m onmt_sdrop.pipeline "$pair" \
    --profile "$profile" --raw "$raw" --steps "$steps" $opts ${EXTRA:+--extra "$EXTRA"} "$@"
}
rc=0
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
    || echo "no GPU ($mode run)"; "$py" -m onmt_sdrop.cli info 2>&1; } > "$OUT/device.txt"
cat "$OUT/device.txt"

echo "=== [$(($(date +%s) - t0)) s] prepare ==="
pipe --work "$work/main" --out "$OUT/seed1" --prepare-only > "$OUT/prepare.log" 2>&1 || rc=$?
tail -3 "$OUT/prepare.log"

# a cap per model, so that the seeds end with translated, reported checkpoints even when training
# is slower than estimated: what is left after reserving ~190 s for translations, the budget run
# and the report, halved (the cap stops at the first checkpoint past it; the reports say so)
cap=$(awk -v l="$(left)" 'BEGIN { c = (l - 190) / 2 / 60; printf "%.2f", (c < 0.5 ? 0.5 : c) }')
echo "=== [$(($(date +%s) - t0)) s] baseline and sdrop, seeds 1 and 2 at the same time" \
  "(at most $cap min of training per model) ==="
for seed in 1 2; do
  pipe --work "$work/main" --out "$OUT/seed$seed" --seed "$seed" --time-budget "$cap" \
    > "$OUT/seed$seed.log" 2>&1 &
done
for job in $(jobs -p); do wait "$job" || rc=$?; done
for seed in 1 2; do grep -E "^=== |error" "$OUT/seed$seed.log"; done

need=$(awk -v b="$budget" 'BEGIN { printf "%d", 2 * 60 * b + 60 }')
if [ "$(left)" -lt "$need" ]; then
  echo "=== [$(($(date +%s) - t0)) s] time budget run SKIPPED: $(left) s left, it needs ~$need s ==="
else
  echo "=== [$(($(date +%s) - t0)) s] time budget: $budget min per model, seed 1 ==="
  mkdir -p "$work/budget"
  cp -r "$work/main/data" "$work/main"/spm.* "$work/main"/vocab.* "$work/budget/" 2>/dev/null
  pipe --work "$work/budget" --out "$OUT/budget" --seed 1 --time-budget "$budget" \
    --no-valid-bleu > "$OUT/budget.log" 2>&1 || rc=$?
  grep -E "^=== |error" "$OUT/budget.log"
fi

echo "=== [$(($(date +%s) - t0)) s] report over the seeds ==="
"$py" -m onmt_sdrop.recipe.aggregate --out "$OUT" --budget "$OUT/budget" \
  "$OUT/seed1" "$OUT/seed2" 2>&1 | tee "$OUT/aggregate.log" || rc=$?
cat "$OUT/report.md" 2>/dev/null
echo "=== [$(($(date +%s) - t0)) s] done (status $rc); results in $OUT ==="
exit "$rc"
