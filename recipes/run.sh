#!/usr/bin/env bash
# The one recipe pipeline (onmt_sdrop/pipeline.py) behind every recipes/<pair>/run.sh.
#   recipes/run.sh PAIR RAW_DIR [PROFILE] [more pipeline options, e.g. --steps 500 --gpu]
# Work files go to recipes/work/PAIR-PROFILE (reruns continue there), the report to
# recipes/results/PAIR-PROFILE. Uses the project's .venv when there is one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
pair=${1:?usage: recipes/run.sh PAIR RAW_DIR [PROFILE] [options]}
raw=${2:?usage: recipes/run.sh PAIR RAW_DIR [PROFILE] [options]}
profile=${3:-cpu-small}
shift $(( $# < 3 ? $# : 3 ))
py=python3
[ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
exec "$py" -m onmt_sdrop.pipeline "$pair" --profile "$profile" --raw "$raw" \
  --work "${WORK:-$root/recipes/work}/$pair-$profile" \
  --out "${RESULTS:-$root/recipes/results}/$pair-$profile" "$@"
