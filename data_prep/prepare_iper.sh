#!/usr/bin/env bash
# iPER -> data/iper_<SIZE>. Usage: bash data_prep/prepare_iper.sh RAW_DIR [SIZE=128] [extra options]
# RAW_DIR holds <actor>_<outfit>_<action>.mp4 (or 001/1/1/ frame folders) AND the official train.txt.
# GrabCut masks as the original (pokes on the person). Free-movement videos only: add --exclude '*_*_1'.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
RAW=${1:?usage: $0 RAW_DIR [SIZE] [extra ipoke data prepare options]}
SIZE=${2:-128}
run_prepare --videos "$RAW" --out "data/iper_${SIZE}" --layout iper --size "$SIZE" \
    --flow-resolution 256 --lags 10,20 --masks grabcut "${@:3}"
