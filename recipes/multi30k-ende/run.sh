#!/usr/bin/env bash
# multi30k-ende: baseline vs structured dropout. Usage (from the project root):
#   recipes/multi30k-ende/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu]
# RAW_DIR defaults to $MULTI30K_ENDE_RAW or ../shared/data/multi30k-ende; PROFILE to cpu-small.
# Where to get the full corpus: see README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
raw=${1:-${MULTI30K_ENDE_RAW:-$here/../../../shared/data/multi30k-ende}}
profile=${2:-cpu-small}
shift $(( $# < 2 ? $# : 2 ))
exec "$here/../run.sh" multi30k-ende "$raw" "$profile" "$@"
