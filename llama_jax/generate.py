"""``python -m llama_jax.generate``: see `llama_jax.infer.cli`."""

from llama_jax.infer.cli import run

if __name__ == "__main__":
    run()
