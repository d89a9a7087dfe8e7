#!/usr/bin/env bash
# Human3.6M -> data/h36m_<SIZE>. Usage: bash data_prep/prepare_h36m.sh RAW_DIR [SIZE=64] [extra options]
# RAW_DIR holds S1/Videos/<Action> <n>.<camera>.mp4 (official) or S1/<action>/<camera> trees.
# S1,5,6,7,8 train; S9,11 test. 50 fps -> every 8th frame (6.25 fps) as the original.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
RAW=${1:?usage: $0 RAW_DIR [SIZE] [extra ipoke data prepare options]}
SIZE=${2:-64}
run_prepare --videos "$RAW" --out "data/h36m_${SIZE}" --layout h36m --size "$SIZE" --frame-step 8 \
    --flow-resolution 256 --lags 10,20 "${@:3}"
