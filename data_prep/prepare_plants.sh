#!/usr/bin/env bash
# Poking Plants -> data/plants_<SIZE>. Usage: bash data_prep/prepare_plants.sh RAW_DIR [SIZE=64] [extra options]
# RAW_DIR holds VID_<plant>_<take>.mkv files. Whole takes are split (per plant, seeded 20 % to test).
# The original also excluded plant 8 and VID_0_3_1024x1024: add --exclude 'VID_8_*' --exclude VID_0_3_1024x1024.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
RAW=${1:?usage: $0 RAW_DIR [SIZE] [extra ipoke data prepare options]}
SIZE=${2:-64}
run_prepare --videos "$RAW" --out "data/plants_${SIZE}" --layout plants --size "$SIZE" \
    --flow-resolution 256 --lags 10,20 "${@:3}"
