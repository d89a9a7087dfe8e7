#!/usr/bin/env bash
# The quickstart's GPU preset end to end on a lent GPU, then the diagnostics, packed into $OUT (the `device` tool).
# Usage (repo root; wheels in .whl from ../shared/tools/device-wheels.sh pymunk==7.3.1 cffi==2.1.1 pycparser==3.12,
# carried with the device call; the GPU image has no pymunk/cffi, and no PyAV: mp4s are then written by OpenCV):
#   bash benchmarks/device_quickstart.sh MINUTES [extra quickstart arguments]
# (SKIP_INSTALL=1 to use the packages already importable, e.g. for a dry run on CPU with `--device cpu --videos 60`
# and DIAGNOSE_TIMEOUT=150: the diagnostics take about 85 s on 2 CPU cores, a few seconds on a GPU.)
# A 40-video smoke run first, so a broken GPU path fails in a minute instead of after the training (SMOKE=0 skips it,
# DIAGNOSE=0 skips the diagnostics at the end: for the last few minutes of a device budget; DIAGNOSE_TIMEOUT sets
# their limit in seconds, default 60). Exits non-zero when the quickstart or the diagnostics fail.
# QS_TIMEOUT=SECONDS interrupts the quickstart (SIGINT: it stops cleanly) after that long and packs what exists: set it
# about a minute under the device call's timeout_s, so that a run whose evaluation is slower than planned still brings
# back its trained model (session 14's run was killed in the evaluation and brought back nothing but its log).
set -euo pipefail
minutes=${1:-5}
shift || true
out=${OUT:-/tmp/device_out}
mkdir -p "$out"
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
echo "open files limit $(ulimit -n)"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
if [ "${SMOKE:-1}" != 0 ]; then
  start=$(date +%s)
  python3 -m ipoke.cli quickstart --out /tmp/smoke --minutes 0.1 --videos 40 --fresh "$@" > "$out/smoke.log" 2>&1 \
    || { tail -60 "$out/smoke.log"; exit 1; }
  echo "smoke run ok in $(( $(date +%s) - start )) s"
fi
start=$(date +%s)
# The filter's `|| true` (grep finds nothing to print) is inside the braces, so a failing quickstart still fails the
# pipeline (pipefail) and is reported here, instead of an earlier run's files in /tmp/qs being packed as its results.
rc=0
limit=()
[ "${QS_TIMEOUT:-0}" = 0 ] || limit=(timeout -s INT -k 30 "$QS_TIMEOUT")
"${limit[@]}" python3 -m ipoke.cli quickstart --out /tmp/qs --minutes "$minutes" --fresh "$@" 2>&1 \
  | tee "$out/quickstart.log" | { grep -v -E "it/s|s/it|clip/s|video/s|batch/s|Warning|warn\(" || true; } || rc=$?
echo "quickstart wall time $(( $(date +%s) - start )) s"
# Pack whatever exists, also after a failure or QS_TIMEOUT: the exported model can be evaluated elsewhere, and the
# finished stages of a run stopped mid-way (runs/<stage>/network) let `ipoke quickstart` go on from them elsewhere.
keep=()
for path in model quickstart_settings.json /tmp/qs/runs/*/network /tmp/qs/runs/*/training.json; do
  path=${path#/tmp/qs/}
  [ -e "/tmp/qs/$path" ] && keep+=("$path")
done
if [ -d /tmp/qs/model ] || compgen -G "/tmp/qs/runs/*/network" > /dev/null; then
  tar czf "$out/model.tgz" -C /tmp/qs "${keep[@]}"
  split -b 15m "$out/model.tgz" "$out/model.tgz.part-" && rm "$out/model.tgz"
fi
report=()
for path in report.md metrics.json metrics_val.json samples runs/autoencoder/logs runs/image_encoder/logs \
  runs/poke_encoder/logs runs/cinn/logs; do
  [ -e "/tmp/qs/$path" ] && report+=("$path")
done
[ "${#report[@]}" = 0 ] || tar czf "$out/report.tgz" -C /tmp/qs "${report[@]}"
if [ "$rc" != 0 ]; then
  echo "quickstart FAILED or was stopped by QS_TIMEOUT (exit $rc); packed: $(ls "$out" | tr '\n' ' ')" >&2
  echo "its whole log is $out/quickstart.log" >&2
  exit "$rc"
fi
[ "${DIAGNOSE:-1}" = 0 ] && { ls -la "$out"; exit 0; }
start=$(date +%s)
rc=0
timeout "${DIAGNOSE_TIMEOUT:-60}" python3 benchmarks/diagnose_model.py --model /tmp/qs/model --data /tmp/qs/data \
  --clips 64 --samples 3 --out "$out/diagnose.json" 2>&1 | tee "$out/diagnose.log" \
  | { grep -v -E "it/s|s/it|clip/s|Warning|warn\(" || true; } \
  || rc=$?
echo "diagnostics $(( $(date +%s) - start )) s"
ls -la "$out"
if [ "$rc" != 0 ]; then
  # 124: the timeout (DIAGNOSE_TIMEOUT seconds, default 60); the quickstart's results above are packed all the same.
  echo "diagnostics FAILED (exit $rc$([ "$rc" = 124 ] && echo ": timed out after ${DIAGNOSE_TIMEOUT:-60} s"))" >&2
  exit "$rc"
fi
