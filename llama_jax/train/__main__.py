"""``python -m llama_jax.train``: see `llama_jax.train.cli`."""

from llama_jax.train.cli import run

if __name__ == "__main__":
    run()
