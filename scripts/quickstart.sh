#!/usr/bin/env bash
# Pack the bundled MNIST-5k digits into shards (once) and train the CPU quickstart DCGAN.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/mnist5k-32/manifest.json ] || .venv/bin/gantrain pack mnist5k data/mnist5k-32 --resolution 32
exec .venv/bin/gantrain train configs/quickstart.yaml --run-dir runs/quickstart --resume auto "$@"
