#!/usr/bin/env bash
# TPU pod launcher: the same command on every worker of a TPU VM slice.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE configs/llama.py:7b /mnt/gcs/runs/llama_7b \
#       --config.data.root=/mnt/data/llama_mixture
#
# The data root (on every worker) holds one JSONL folder per Table 1 source and
# tokenizer.model (or pass --config.data.tokenizer=PATH).
#
# Copies this repository to every worker (gcloud scp), installs it, then runs
# `python -m llama_jax.train` on all workers at once (--worker=all).
# jax.distributed detects the pod slice by itself; process 0 writes metrics.
# The workdir must be a path every worker sees (a gcsfuse-mounted bucket or
# NFS) so that a restarted job resumes from it.
#
# Environment:
#   XLA_PRESET     flag preset for LIBTPU_INIT_ARGS (default tpu_overlap)
#   REMOTE_DIR     where the repository goes on the workers (default ~/llama_jax)
#   SKIP_SYNC=1    do not copy/install (already there)
#   DRY_RUN=1      print the gcloud commands instead of running them
#   GCLOUD         gcloud executable (default gcloud)
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU=$1
ZONE=$2
CONFIG=$3
WORKDIR=$4
shift 4
cd "$(dirname "$0")/.."
GCLOUD=${GCLOUD:-gcloud}
XLA_PRESET=${XLA_PRESET:-tpu_overlap}
REMOTE_DIR=${REMOTE_DIR:-llama_jax}
flags_value=$(python3 launch/xla_flags.py --preset="$XLA_PRESET" --format=value)
overrides=""
for arg in "$@"; do overrides+=" $(printf '%q' "$arg")"; done
remote="cd $REMOTE_DIR && LIBTPU_INIT_ARGS=$(printf '%q' "$flags_value") \
python3 -m llama_jax.train --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")$overrides"
run() {
  if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [ -z "${SKIP_SYNC:-}" ]; then
  tarball=$(mktemp -t llama_jax.XXXXXX.tar.gz)
  git ls-files -z | tar --null -czf "$tarball" -T -
  run "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$TPU:llama_jax.tar.gz" --zone="$ZONE" --worker=all
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
    "mkdir -p $REMOTE_DIR && tar -xzf llama_jax.tar.gz -C $REMOTE_DIR && pip install -q -e $REMOTE_DIR 'jax[tpu]'"
  rm -f "$tarball"
fi
run "$GCLOUD" compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "$remote"
