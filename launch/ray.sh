#!/usr/bin/env bash
# Ray Train on a running cluster (or, with RAY_ADDRESS unset and no --address, a local Ray instance).
# Usage: WORKERS=8 GPUS_PER_WORKER=1 [CPUS_PER_WORKER=8] [RAY_ADDRESS=auto] \
#        launch/ray.sh CONFIG [key=value ...] --run-dir DIR [--resume auto]
set -euo pipefail
address=()
[ -n "${RAY_ADDRESS:-}" ] && address=(--address "$RAY_ADDRESS")
exec gantrain train "$1" engine.name="${ENGINE:-ddp}" "${@:2}" --ray --workers "${WORKERS:-1}" \
    --gpus-per-worker "${GPUS_PER_WORKER:-0}" --cpus-per-worker "${CPUS_PER_WORKER:-1}" "${address[@]}"
