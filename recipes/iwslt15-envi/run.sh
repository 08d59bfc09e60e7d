#!/usr/bin/env bash
# iwslt15-envi: baseline vs structured dropout. Usage (from anywhere):
#   recipes/iwslt15-envi/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu] [...]
# RAW_DIR defaults to $IWSLT15_ENVI_RAW or ../shared/data/iwslt15-envi; PROFILE to cpu-small.
# More options: recipes/run.sh --help-all. Where to get the full corpus: README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in -h|--help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
raw=${IWSLT15_ENVI_RAW:-$here/../../../shared/data/iwslt15-envi}
if [ $# -gt 0 ] && [[ $1 != -* ]]; then raw=$1; shift; fi
profile=cpu-small
if [ $# -gt 0 ] && [[ $1 != -* ]]; then profile=$1; shift; fi
exec "$here/../run.sh" iwslt15-envi "$raw" "$profile" "$@"
