#!/usr/bin/env bash
# The GPU check: the CUDA-specific tests and the training-speed figures in one run, one report.
#
#   scripts/gpu_check.sh OUT_DIR [--wheels DIR] [--budget-s 480]   on a machine with a CUDA GPU
#   scripts/gpu_check.sh --dry-run OUT_DIR                           on CPU, tiny sizes, under 2 minutes (CI)
#
# It reuses the torch of the Python it runs with ($PYTHON, default python3): nothing is downloaded.
# What that image lacks (deepspeed, webdataset, pytest, ...) comes as wheels in DIR (default
# gpu-wheels/ beside this checkout, made by scripts/gpu_wheels.sh on a machine with PyPI); they go into
# a throwaway site directory on PYTHONPATH for this run only, the image's packages staying untouched.
# Without wheels the check uses what is installed, and the parts that need a missing package say so
# in the report (e.g. the DeepSpeed tests are skipped with "deepspeed is not installed").
# Writes OUT_DIR/gpu-report.md and gpu-report.json (+ the tests' log and junit XML). Exit 1 if a test failed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS="$REPO/gpu-wheels"
ARGS=()
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; shift 2 ;;
        --dry-run|--skip-tests) ARGS+=("$1"); shift ;;
        --budget-s) ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || { echo "gpu_check.sh: OUT_DIR is required (see --help)" >&2; exit 2; }
mkdir -p "$OUT"
SITE=$(mktemp -d "${TMPDIR:-/tmp}/gantrain-gpu-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "gpu_check: installing ${#wheels[@]} wheels from $WHEELS into a throwaway site directory"
    if ! "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
            "${wheels[@]}" >"$OUT/install.log" 2>&1; then
        echo "gpu_check: installing the wheels failed (see $OUT/install.log); going on with what is installed"
    fi
else
    echo "gpu_check: no wheels in $WHEELS; using what $PY has (scripts/gpu_wheels.sh makes them)"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" "$REPO/scripts/gpu_check.py" "$OUT" ${ARGS[@]+"${ARGS[@]}"}
