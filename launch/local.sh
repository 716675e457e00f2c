#!/usr/bin/env bash
# Local launcher: one process driving every local device (CPU, one or more GPUs).
#
#   bash launch/local.sh configs/tiny.py /tmp/llama_tiny [--config.key=value ...]
#
# Environment:
#   XLA_PRESET  XLA flag preset (launch/xla_flags.py); default gpu_overlap when
#               nvidia-smi sees a GPU, else none. Flags the installed jaxlib does
#               not know stop the launch here, with their names.
#   PYTHON      interpreter (default: python)
#   DRY_RUN=1   print the command and the flags instead of running
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash launch/local.sh CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -z "${XLA_PRESET:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    XLA_PRESET=gpu_overlap
  else
    XLA_PRESET=none
  fi
fi
# A plain assignment, so that set -e stops on a failed check.
flags_line=$("$PYTHON" launch/xla_flags.py --preset="$XLA_PRESET" --check)
eval "$flags_line"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
cmd=("$PYTHON" -m llama_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [ -n "${DRY_RUN:-}" ]; then
  echo "$flags_line"
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
