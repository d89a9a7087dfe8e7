#!/usr/bin/env bash
# TaiChi-HD (first-order-model layout) -> data/taichi_<SIZE>. Usage: bash data_prep/prepare_taichi.sh RAW_DIR [SIZE=64]
# RAW_DIR holds train/ and test/ folders of mp4 files or frame folders. GrabCut masks as the original.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
RAW=${1:?usage: $0 RAW_DIR [SIZE] [extra ipoke data prepare options]}
SIZE=${2:-64}
run_prepare --videos "$RAW" --out "data/taichi_${SIZE}" --layout taichi --size "$SIZE" \
    --flow-resolution 256 --lags 10,20 --masks grabcut "${@:3}"
