"""``python -m llama_jax.lm_eval``: lm-eval's CLI with ``--model llama_jax`` (see __init__)."""

import sys

from llama_jax.lm_eval import main

if __name__ == "__main__":
    sys.exit(main())
