#!/usr/bin/env bash
# The one recipe pipeline (onmt_sdrop/pipeline.py) behind every recipes/<pair>/run.sh.
# Usage: recipes/run.sh PAIR RAW_DIR [PROFILE] [--steps N] [--time-budget MIN] [--models baseline,sdrop]
#        [--valid-bleu] [--seed N] [--gpu] [--extra "ONMT OPTIONS"]
# Work files go to $WORK/PAIR-PROFILE (default recipes/work; reruns continue there), the report to
# $RESULTS/PAIR-PROFILE (default recipes/results). Uses the project's .venv when there is one.
# Pairs, profiles and every option: recipes/run.sh --help-all
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=python3
[ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
usage() { sed -n '2,7s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --help-all) usage; echo; exec "$py" -m onmt_sdrop.pipeline --help ;;
esac
if [ $# -lt 2 ] || [[ $1 == -* ]] || [[ $2 == -* ]]; then
  echo "recipes/run.sh: error: PAIR and RAW_DIR are required (recipes/run.sh --help)" >&2
  exit 2
fi
pair=$1 raw=$2
shift 2
profile=cpu-small
if [ $# -gt 0 ] && [[ $1 != -* ]]; then profile=$1; shift; fi

exec "$py" -m onmt_sdrop.pipeline "$pair" --profile "$profile" --raw "$raw" \
  --work "${WORK:-$root/recipes/work}/$pair-$profile" \
  --out "${RESULTS:-$root/recipes/results}/$pair-$profile" "$@"
