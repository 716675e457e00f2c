"""Evaluation: jitted scoring, KV-cache generation, the paper's benchmark tasks.

* `Scorer` (`scoring.py`): log-likelihoods of (context, continuation) token
  pairs, bucketed and mesh-sharded; rolling and packed perplexity.
* `Generator`, `generate_text`, `SamplingConfig` (`generate.py`): batched
  left-padded sampling with a KV cache.
* `tasks`: the registry of benchmarks (`get_task`, `parse_task_list`).
* `metrics`, `sandbox`, `report`, `paper_results`: scoring rules, the code
  sandbox, result tables, the paper's numbers.
* CLI: ``python -m llama_jax.eval`` (see docs/eval.md).
"""

from llama_jax.eval.scoring import LoglikelihoodResult, Scorer
from llama_jax.infer.engine import Generator, SamplingConfig, generate_text

__all__ = ["Generator", "LoglikelihoodResult", "SamplingConfig", "Scorer", "generate_text"]
