#!/usr/bin/env bash
# iwslt14-deen: baseline vs structured dropout. Usage (from anywhere):
#   recipes/iwslt14-deen/run.sh [RAW_DIR] [PROFILE] [--steps N] [--time-budget MIN] [--gpu] [...]
# RAW_DIR defaults to $IWSLT14_DEEN_RAW or ../shared/data/iwslt14-deen; PROFILE to cpu-small.
# More options: recipes/run.sh --help-all. Where to get the full corpus: README, "Reproduce the paper".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in -h|--help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
raw=${IWSLT14_DEEN_RAW:-$here/../../../shared/data/iwslt14-deen}
if [ $# -gt 0 ] && [[ $1 != -* ]]; then raw=$1; shift; fi
profile=cpu-small
if [ $# -gt 0 ] && [[ $1 != -* ]]; then profile=$1; shift; fi
exec "$here/../run.sh" iwslt14-deen "$raw" "$profile" "$@"
