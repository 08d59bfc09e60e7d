#!/usr/bin/env bash
# multi30k-ende: baseline vs structured dropout. Usage (from anywhere):
#   recipes/multi30k-ende/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu] [...]
# RAW_DIR defaults to $MULTI30K_ENDE_RAW or ../shared/data/multi30k-ende; PROFILE to cpu-small.
# More options: recipes/run.sh --help-all. Where to get the full corpus: README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in -h|--help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
raw=${MULTI30K_ENDE_RAW:-$here/../../../shared/data/multi30k-ende}
if [ $# -gt 0 ] && [[ $1 != -* ]]; then raw=$1; shift; fi
profile=cpu-small
if [ $# -gt 0 ] && [[ $1 != -* ]]; then profile=$1; shift; fi
exec "$here/../run.sh" multi30k-ende "$raw" "$profile" "$@"
