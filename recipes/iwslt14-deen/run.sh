#!/usr/bin/env bash
# iwslt14-deen: baseline vs structured dropout. Usage (from the project root):
#   recipes/iwslt14-deen/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu]
# RAW_DIR defaults to $IWSLT14_DEEN_RAW or ../shared/data/iwslt14-deen; PROFILE to cpu-small.
# Where to get the full corpus: see README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
raw=${1:-${IWSLT14_DEEN_RAW:-$here/../../../shared/data/iwslt14-deen}}
profile=${2:-cpu-small}
shift $(( $# < 2 ? $# : 2 ))
exec "$here/../run.sh" iwslt14-deen "$raw" "$profile" "$@"
