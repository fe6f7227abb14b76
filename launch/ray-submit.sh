#!/usr/bin/env bash
# Submit a training job to a Ray cluster's Jobs API from this machine; prints the job id.
# Usage: RAY_JOBS=http://127.0.0.1:8265 WORKERS=4 GPUS_PER_WORKER=1 \
#        launch/ray-submit.sh CONFIG [key=value ...] --run-dir /shared/runs/NAME [--wait]
# Then: gantrain jobs status|logs|stop JOB_ID --address "$RAY_JOBS"
set -euo pipefail
exec gantrain submit "$1" engine.name="${ENGINE:-ddp}" "${@:2}" --address "${RAY_JOBS:-http://127.0.0.1:8265}" \
    --workers "${WORKERS:-1}" --gpus-per-worker "${GPUS_PER_WORKER:-0}" --cpus-per-worker "${CPUS_PER_WORKER:-1}"
