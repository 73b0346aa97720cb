#!/usr/bin/env bash
# The GPU hour's one device command (docs/performance.md, "The GPU hour"): on the lent machine,
# from the repository root, with .gpu-bundle carried (`make gpu-bundle` here first):
#
#     bash benchmarks/gpu_hour.sh                 # real scale, every step, results in $OUT
#
# It installs the bundle's wheels into a private folder with pip --no-index (the machine reaches
# no registry; its own packages stay as they are), prints what it runs on, then runs
# benchmarks/gpu_hour.py under a hard time limit, which writes JSON and markdown to $OUT after
# every measurement. Arguments go to benchmarks/gpu_hour.py (--scale tiny --device cpu, --steps).
#
# Environment: PYTHON (default python3, the device's), BUNDLE_WHEELS (default
# .gpu-bundle/wheels; the rehearsal passes its CPython 3.11 twin), GPU_HOUR_SITE (the private
# folder, default a new temporary one), GPU_HOUR_LIMIT_S (the hard limit of the whole command,
# default 480: 8 minutes, twice within the 15 of a loan).
set -euo pipefail
export GPU_HOUR_STARTED=${GPU_HOUR_STARTED:-$(date +%s)}
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUNDLE_WHEELS=${BUNDLE_WHEELS:-.gpu-bundle/wheels}
LIMIT_S=${GPU_HOUR_LIMIT_S:-480}
export OUT=${OUT:-$PWD/gpu-hour-out}
export GPU_HOUR_SITE=${GPU_HOUR_SITE:-$(mktemp -d -t depthid-site-XXXXXX)}
mkdir -p "$OUT"

if ! ls "$BUNDLE_WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu-hour: no wheels in $BUNDLE_WHEELS: run \`make gpu-bundle\` and carry .gpu-bundle" >&2
    exit 2
fi
echo "gpu-hour: installing $(ls "$BUNDLE_WHEELS"/*.whl | wc -l) wheels into $GPU_HOUR_SITE"
# --no-deps: the wheels are the whole of what is missing (requirements/gpu_bundle.py derived
# them); the device's own packages provide the rest, and the env step checks they do.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --target "$GPU_HOUR_SITE" "$BUNDLE_WHEELS"/*.whl
# The bundle first, then the repository; the device's site-packages after both.
export PYTHONPATH="$GPU_HOUR_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1
echo "gpu-hour: installed in $(( $(date +%s) - GPU_HOUR_STARTED )) s"

# What it runs on, first, whatever happens after.
{ command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: none (no NVIDIA GPU)"; } \
    | tee "$OUT/nvidia-smi.txt"
"$PYTHON" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null >"$OUT/pip-list.txt" || true

left=$(( LIMIT_S - ($(date +%s) - GPU_HOUR_STARTED) ))
# The Python side keeps to its own budget (a little under the limit); the limit is the backstop:
# TERM first, KILL 10 s later. What it finished is in $OUT either way.
status=0
timeout --kill-after=10 "$left" "$PYTHON" -m benchmarks.gpu_hour \
    --budget-s "$(( LIMIT_S - 30 ))" "$@" || status=$?
echo "gpu-hour: exit $status after $(( $(date +%s) - GPU_HOUR_STARTED )) s; results in $OUT"
exit $status
