#!/usr/bin/env bash
# Make the wheels that scripts/gpu_check.sh installs on a GPU machine which has torch but not the rest.
# Run where PyPI is reachable, with gantrain's .venv built (scripts/bootstrap.sh):
#
#   scripts/gpu_wheels.sh [DIR] [PYTHON_VERSION]      default DIR gpu-wheels/, PYTHON_VERSION 3.12
#
# Versions are the ones .venv runs (what the tests pass with). deepspeed is built as a pure-Python
# wheel (`pip wheel --no-deps`, no build isolation, so no second torch is fetched; its ops are
# JIT-built where needed); the other pure-Python packages are downloaded as py3 wheels; the
# compiled ones (pydantic-core, msgpack, psutil, ninja) for CPython PYTHON_VERSION on manylinux x86-64.
# Ray is not needed by the check. Copy DIR next to the checkout on the GPU machine.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$REPO/gpu-wheels}
PYVER=${2:-3.12}
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$DIR"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pin() { for name in "$@"; do echo "$name==$(version "$name")"; done; }
# deepspeed's and webdataset's requirements, and pytest's, that a torch-only image may lack.
PURE=(webdataset braceexpand hjson py-cpuinfo pydantic annotated-types typing-inspection typing-extensions einops
      pytest pluggy iniconfig packaging pygments)
BINARY=(pydantic-core msgpack psutil ninja)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIR" "$(pin deepspeed)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR" $(pin "${PURE[@]}")
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$DIR" $(pin "${BINARY[@]}")
ls -1 "$DIR"
du -sh "$DIR"
