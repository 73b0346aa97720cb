#!/usr/bin/env bash
# The GPU hour's rehearsal (`make gpu-hour-rehearsal`; tests/deploy/test_gpu_hour.py): the device
# command, benchmarks/gpu_hour.sh, end to end on this machine's CPU at tiny scale, in a fresh
# virtual environment that holds only what stands in for the device's packages
# (.gpu-hour-rehearsal/device, `make gpu-bundle` writes it), installed with pip --no-index and no
# pip configuration (no index, no find-links, no network). gpu_hour.sh then installs the
# bundle's CPython 3.11 twin (.gpu-hour-rehearsal/bundle) into its private folder with --no-deps,
# exactly as it installs .gpu-bundle on the device. A package missing from the bundle fails here.
#
# Environment: PYTHON (default python3: this machine's 3.11), OUT (default ./gpu-hour-out).
# Arguments go to benchmarks/gpu_hour.py after --scale tiny --device cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
REHEARSAL=.gpu-hour-rehearsal
if [ ! -f "$REHEARSAL/device/requirements.txt" ]; then
    echo "gpu-hour-rehearsal: no $REHEARSAL: run \`make gpu-bundle\` first" >&2
    exit 2
fi
started=$(date +%s)
work=$(mktemp -d -t gpu-hour-rehearsal-XXXXXX)
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
echo "gpu-hour-rehearsal: a fresh venv from $REHEARSAL/device only (pip --no-index)"
PIP_CONFIG_FILE=/dev/null "$work/venv/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-index --find-links "$REHEARSAL/device" \
    -r "$REHEARSAL/device/requirements.txt"
echo "gpu-hour-rehearsal: venv ready in $(( $(date +%s) - started )) s"
# The tiny steps on 2 shared cores: one thread each, as CI runs them.
PIP_CONFIG_FILE=/dev/null PYTHON="$work/venv/bin/python" BUNDLE_WHEELS="$REHEARSAL/bundle" \
    GPU_HOUR_SITE="$work/site" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
    GPU_HOUR_LIMIT_S=${GPU_HOUR_LIMIT_S:-900} \
    bash benchmarks/gpu_hour.sh --scale tiny --device cpu --runs 1 "$@"
echo "gpu-hour-rehearsal: done in $(( $(date +%s) - started )) s"
