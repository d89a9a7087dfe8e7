#!/usr/bin/env bash
# Your own videos -> data/<NAME>_<SIZE>. Usage: bash data_prep/prepare_own.sh RAW_DIR NAME [SIZE=128] [extra options]
# RAW_DIR: any tree of video files and frame folders. Seeded 20 % of the videos go to test unless you pass
# --split-file FILE (lines '<video> <split>'). See docs/real_data.md.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
RAW=${1:?usage: $0 RAW_DIR NAME [SIZE] [extra ipoke data prepare options]}
NAME=${2:?usage: $0 RAW_DIR NAME [SIZE] [extra ipoke data prepare options]}
SIZE=${3:-128}
run_prepare --videos "$RAW" --out "data/${NAME}_${SIZE}" --size "$SIZE" --flow-resolution 256 --lags 10,20 "${@:4}"
