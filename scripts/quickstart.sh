#!/usr/bin/env bash
# Pack the bundled MNIST-5k digits into shards and train the digit classifier the metrics use (both once),
# then train the CPU quickstart DCGAN, evaluating FID/KID/precision/recall every 20 kimg.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/mnist5k-32/manifest.json ] || .venv/bin/gantrain pack mnist5k data/mnist5k-32 --resolution 32
[ -f data/mnist5k-32-classifier.safetensors ] || .venv/bin/gantrain eval train-classifier data/mnist5k-32 \
    --out data/mnist5k-32-classifier.safetensors --epochs 6
exec .venv/bin/gantrain train configs/quickstart.yaml --run-dir runs/quickstart --resume auto "$@"
