#!/usr/bin/env bash
# Issue 11, in one device call of at most 8 minutes: Multi30k En-De with the full-size model
# (OpenNMT-py defaults: 2x500 bi-LSTM encoder, input-feed decoder, general attention, dropout 0.3;
# profile gpu-converge: Adam 1e-3, 128 sentences a batch, 800 steps, no DataLoader workers),
# the stock baseline against sdrop (default backend: auto), two seeds per model, greedy valid BLEU
# at every checkpoint (BLEU against wall-clock time), then a --time-budget run (both models get the
# same minutes), and one report over the seeds.
#
#   here:    ../shared/tools/gpu-wheels.sh                  (OpenNMT-py etc. into .whl/)
#            bash recipes/gpu_check.sh --stage-data         (Multi30k into recipes/work/gpu-data/)
#   device:  run(command="bash recipes/gpu_check.sh", carry=[".whl", "recipes/work/gpu-data"],
#                timeout_s=540)
#   CPU:     bash recipes/gpu_check.sh --dry-run            (tiny model on the bundled sample; tests)
#   trainer: run(command="bash recipes/gpu_check.sh --trainer-profile", carry=[".whl",
#                "recipes/work/gpu-data"], timeout_s=300): ONLY bench/trainer_profile.py, where a real
#            onmt_train step's time goes (data, forward, loss, stats, backward, optimizer) for
#            stock, sdrop and sdrop with CUDA graphs, -num_workers 0 and 2, the bare loop beside it
#            (~3-4 min estimated, capped at TOTAL_S, default 270 s); writes
#            $OUT/trainer-gpu-<date>.json after each variant (OUT default bench/results).
#            (a bit much beside the 8-minute run in one session's 15 device minutes: STEPS=10
#            and TOTAL_S=150 fit what is left). --trainer-profile --dry-run: the same on the CPU
#            with a tiny model (tests/test_trainer_profile.py)
#
# Writes under $OUT (default recipes/results/multi30k-ende-gpu) after each stage: device.txt,
# seed1/ and seed2/ (report.md, summary.json, PNGs, evidence/), budget/, and report.md +
# summary.json + bleu_time.png over the seeds; every stage's output in *.log there.
# The two seeds of a model train at the same time on the one GPU (two processes; the step is
# launch-bound, so they share it with little loss): this is what fits two seeds into 8 minutes.
# Sizes (env): STEPS (default 800), BUDGET_MIN (0.5), TOTAL_S (a deadline for the whole script,
# default 470 s), EXTRA (more onmt_train options for both models). Estimate from an H200 at batch
# 64 (bench/results/trainer-gpu-2026-11-27*.json: stock 48 ms/step, sdrop 27 ms with its CUDA
# graphs, on by default): ~20 s wheels and data, ~200 s for the seeds (800 steps, validations,
# translations), ~120 s for the budget run; the budget run is skipped, saying so, when too little
# time is left for it. The first H200 run (2026-11-27, 2 workers then) hung: the spawned workers
# could not import OpenNMT-py without the start-up hook (bench/gpu_env.sh installs it now).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
t0=$(date +%s)
mode=gpu
stage=recipe
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,35s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --stage-data)
      mkdir -p recipes/work/gpu-data
      cp "${MULTI30K_ENDE_RAW:-$root/../shared/data/multi30k-ende}"/{train,valid,test2016}.{en,de}.xz \
        recipes/work/gpu-data/ && ls -la recipes/work/gpu-data; exit $? ;;
    --dry-run) mode=dry ;;
    --trainer-profile) stage=trainer ;;
    *) echo "gpu_check.sh: error: unknown option $arg (--help)" >&2; exit 2 ;;
  esac
done

if [ "$stage" = trainer ]; then
  # where a real onmt_train step's time goes (issue 11): bench/trainer_profile.py only
  export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
  py=python3
  if [ "$mode" = gpu ]; then
    source bench/gpu_env.sh || exit 1
    OUT=${OUT:-bench/results}
    data=(--data data/iwslt14-sample)
    [ -e recipes/work/gpu-data/train.en.xz ] && data=(--data recipes/work/gpu-data --langs en,de)
    set -- --gpu "${data[@]}" --variants stock,sdrop,sdrop_graphs --num-workers 2,0 \
      --steps "${STEPS:-30}" --profile-steps 20 --kernels 3 --bare-steps 20 \
      --out "$OUT" --note "recipes/gpu_check.sh --trainer-profile"
  else
    [ -x .venv/bin/python ] && py=.venv/bin/python
    OUT=${OUT:-$(mktemp -d)}
    set -- --dry-run --variants stock,sdrop --bare-steps 1 --out "$OUT/trainer-dry-run.json"
  fi
  mkdir -p "$OUT"
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
      || echo "no GPU ($mode run)"; } | tee "$OUT/trainer-device.txt"
  timeout --signal=INT --kill-after=10 "${TOTAL_S:-270}" "$py" bench/trainer_profile.py "$@" \
    > "$OUT/trainer-profile.log" 2>&1
  rc=$?
  # the variants' lines and the table (the log also has OpenNMT-py's own output)
  grep -E "^(===|    [a-z_]+(/nw[0-9]+)?: |    bare loop)|[Ee]rror" "$OUT/trainer-profile.log"
  grep -B1 -A12 "^variant " "$OUT/trainer-profile.log"
  echo "=== trainer profile done (status $rc); results in $OUT ==="
  exit "$rc"
fi

if [ "$mode" = gpu ]; then
  OUT=${OUT:-recipes/results/multi30k-ende-gpu}
  pair=multi30k-ende profile=gpu-converge raw=${RAW:-recipes/work/gpu-data}
  steps=${STEPS:-800} budget=${BUDGET_MIN:-0.5} total=${TOTAL_S:-470}
  opts=--gpu   # the profile turns on the greedy valid BLEU
  py=python3
  source bench/gpu_env.sh || exit 1
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
