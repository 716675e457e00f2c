"""Per-row sampling: every decode slot has its own temperature and top_p.

`llama_jax.infer.engine.sample_logits` takes one static `SamplingConfig` for a
whole batch; a continuous batch mixes requests with different settings in one
compiled step, so here the settings are arrays. For a row with temperature t
and top_p p this is the same computation as ``sample_logits`` with
``SamplingConfig(t, 0, p)`` (greedy when t == 0), so the same key gives the
same token (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llama_jax.infer.engine import greedy_tokens


def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array,
                top_p: jax.Array) -> jax.Array:
    """One token id per row.

    Args:
      logits: [batch, vocab].
      keys: [batch] PRNG keys.
      temperature: [batch]; 0 means greedy (argmax).
      top_p: [batch] nucleus mass in (0, 1]; 1 keeps every token.

    Returns:
      [batch] int32 token ids.
    """
    greedy = greedy_tokens(logits)  # [batch]
    safe_t = jnp.where(temperature > 0, temperature, 1.0)[:, None]  # [batch, 1]
    scaled = logits.astype(jnp.float32) / safe_t  # [batch, vocab]
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]  # [batch, vocab], descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep = before < top_p[:, None]  # the most likely token is always kept
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    nucleus = jnp.where((top_p[:, None] < 1.0) & (scaled < cutoff), -jnp.inf, scaled)
    sampled = jax.vmap(jax.random.categorical)(keys, nucleus).astype(jnp.int32)  # [batch]
    return jnp.where(temperature > 0, sampled, greedy)
