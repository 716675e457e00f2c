"""Inference: the KV-cache generation engine, sampling, parameter placement, the CLI.

* `Generator`, `generate_text`, `SamplingConfig` (`engine.py`): batched,
  left-padded sampling with a KV cache, compiled for a few prompt buckets.
* `placement.py`: the default mesh and sharded parameters for eval and inference.
* CLI: ``python -m llama_jax.generate`` (`cli.py`).
"""

from llama_jax.infer.engine import GREEDY, Generator, SamplingConfig, generate_text

__all__ = ["GREEDY", "Generator", "SamplingConfig", "generate_text"]
