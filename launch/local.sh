#!/usr/bin/env bash
# One local process on this machine's device (GPU if present, else CPU).
# Usage: launch/local.sh CONFIG [key=value ...] [--run-dir DIR] [--resume auto|PATH]
set -euo pipefail
exec "${GANTRAIN:-gantrain}" train "$@"
