#!/usr/bin/env bash
# iwslt15-envi: baseline vs structured dropout. Usage (from the project root):
#   recipes/iwslt15-envi/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu]
# RAW_DIR defaults to $IWSLT15_ENVI_RAW or ../shared/data/iwslt15-envi; PROFILE to cpu-small.
# Where to get the full corpus: see README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
raw=${1:-${IWSLT15_ENVI_RAW:-$here/../../../shared/data/iwslt15-envi}}
profile=${2:-cpu-small}
shift $(( $# < 2 ? $# : 2 ))
exec "$here/../run.sh" iwslt15-envi "$raw" "$profile" "$@"
