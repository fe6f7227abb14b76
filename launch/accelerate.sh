#!/usr/bin/env bash
# accelerate launch as a process starter for the ddp engine (GPUs). gantrain does its own DDP; Accelerate
# only sets RANK/WORLD_SIZE/MASTER_*. On CPU prefer launch/torchrun.sh: `accelerate launch --cpu` starts
# one process whatever --num_processes says.
# Usage: NUM_PROCESSES=8 launch/accelerate.sh CONFIG [key=value ...] --run-dir DIR [--resume auto]
set -euo pipefail
exec accelerate launch --multi_gpu --num_processes "${NUM_PROCESSES:-1}" -m gantrain.cli train \
    "$1" engine.name=ddp "${@:2}"
