#!/usr/bin/env bash
# Every GPU check in one command (about 8 minutes on one H100 / H200):
#   (i)   our Pallas kernel through the real GPU lowering, forward and backward,
#         vs the plain-jnp reference: f32 and bf16, packed segments or none, GQA
#   (ii)  attention forward and forward+backward TFLOP/s, seq 1k-16k, head_dim 128,
#         causal: ours vs cuDNN vs XLA in the same run        (benchmarks/attention.py)
#   (iii) train-step tokens/s and MFU, ~1B and 7B-shaped models, per attention
#         implementation and remat policy                      (benchmarks/gpu_suite.py)
#   (iv)  greedy decode tokens/s at batch 1 and 64 vs the HBM-bandwidth bound
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --smoke    # CPU: same code, tiny shapes, interpret mode
#
# JSON goes to $OUT (attention.json, gpu_suite.json, logs), or when OUT is unset to
# benchmarks/results/gpu_suite_<date>[_smoke]/; the suite's table is printed last.
# Imports only the GPU image's packages (jax, flax, optax, numpy): see docs/performance.md.
# Exit status: non-zero when a correctness check failed or a measurement errored.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
if [[ "${1:-}" == "--smoke" ]]; then SMOKE="--smoke"; shift; fi
if [[ -z "${OUT:-}" ]]; then
  OUT="benchmarks/results/gpu_suite_$(date -u +%Y-%m-%d)${SMOKE:+_smoke}"
fi
export OUT
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
START=$(date +%s)

if [[ -n "$SMOKE" ]]; then
  ATTN=(--smoke --seqs=40)
  ATTN_LIMIT=300
else
  ATTN=(--seqs=1024,2048,4096,8192,16384 --warmup=2 --iters=10)
  ATTN_LIMIT=180
fi
# (i) and (ii); capped so that (iii) and (iv) keep their share of the 8 minutes.
timeout "$ATTN_LIMIT" "$PY" benchmarks/attention.py "${ATTN[@]}" 2>&1 | tee "$OUT/attention.log"
ATTN_RC=${PIPESTATUS[0]}

# (iii) and (iv), then the table of all four, last.
"$PY" benchmarks/gpu_suite.py $SMOKE --start_time="$START" --attention_rc="$ATTN_RC" "$@" \
  2>&1 | tee "$OUT/gpu_suite.log"
SUITE_RC=${PIPESTATUS[0]}
if [[ "$ATTN_RC" -ne 0 ]]; then exit "$ATTN_RC"; fi
exit "$SUITE_RC"
