#!/usr/bin/env bash
# torchrun: one process per GPU (or CPU rank with gloo), on one or several nodes. engine.name must be ddp.
# Usage: NPROC_PER_NODE=8 [NNODES=2 NODE_RANK=0 MASTER_ADDR=host MASTER_PORT=29500] \
#        launch/torchrun.sh CONFIG [key=value ...] --run-dir DIR [--resume auto]
set -euo pipefail
exec torchrun --nproc-per-node "${NPROC_PER_NODE:-1}" --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    -m gantrain train "$1" engine.name=ddp "${@:2}"
