#!/usr/bin/env bash
# The deepspeed launcher (one node, or several through a hostfile). Sets engine.name=deepspeed.
# Usage: NUM_GPUS=8 [HOSTFILE=hosts] launch/deepspeed.sh CONFIG [key=value ...] --run-dir DIR [--resume auto]
# On CPU: DS_ACCELERATOR=cpu NUM_GPUS=2 launch/deepspeed.sh ...  (the launcher reads the count as processes)
set -euo pipefail
exec deepspeed ${HOSTFILE:+--hostfile "$HOSTFILE"} --num_gpus "${NUM_GPUS:-1}" --no_local_rank --module gantrain.cli train \
    "$1" engine.name=deepspeed "${@:2}"
