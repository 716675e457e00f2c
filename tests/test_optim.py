"""The paper's optimizer: schedule values by hand, AdamW against plain numpy, decay masks."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llama_jax.model import abstract_params
from llama_jax.train import optim


def test_schedule_hand_computed_values():
    # Paper-style: peak 3e-4, 2000 warm-up steps, 10000 steps, cosine to 10%.
    sched = optim.lr_schedule(3e-4, 2000, 10000, 0.1)
    expect = {
        0: 3e-4 * 1 / 2000,        # first update: t = 1
        999: 3e-4 * 1000 / 2000,   # halfway through warm-up
        1999: 3e-4,                # last warm-up step is at the peak
        5999: 3e-5 + 0.5 * (3e-4 - 3e-5),  # t = 6000: cosine halfway -> mean of peak and floor
        9999: 3e-5,                # final step: exactly 10% of peak
        20000: 3e-5,               # past the end: stays at the floor
    }
    for count, want in expect.items():
        assert float(sched(count)) == pytest.approx(want, rel=1e-6), count
        assert optim.lr_at(count, 3e-4, 2000, 10000, 0.1) == pytest.approx(want, rel=1e-6)
    # A quarter into the decay: floor + (peak - floor) * (1 + cos(pi/4)) / 2.
    q = 3e-5 + (3e-4 - 3e-5) * (1 + math.cos(math.pi / 4)) / 2
    assert float(sched(1999 + 2000)) == pytest.approx(q, rel=1e-6)
    # Monotone: rising during warm-up, falling after.
    values = np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(0, 10000, 7)))
    peak_at = int(np.argmax(values))
    assert np.all(np.diff(values[:peak_at + 1]) >= 0) and np.all(np.diff(values[peak_at:]) <= 1e-12)


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer.lr"):
        optim.lr_schedule(-1.0, 10, 100)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        optim.lr_schedule(1e-3, 10, 100, 1.5)
    with pytest.raises(ValueError, match="decay_mask"):
        optim.decay_mask({"w": jnp.zeros((2, 2))}, "some")


@pytest.mark.parametrize("scan", [True, False])
def test_decay_mask_matrices_not_norms(tiny_config, scan):
    # Shapes are all a mask needs: the abstract (eval_shape) parameters.
    params = nn.meta.unbox(abstract_params(tiny_config.replace(scan_layers=scan)))
    mask = optim.decay_mask(params, "matrices")
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    for path, decays in flat.items():
        is_norm = "norm" in path and "scale" in path
        assert decays == (not is_norm), path
    no_embed = optim.decay_mask(params, "matrices_no_embed")
    assert not no_embed["tok_embeddings"]["embedding"] and no_embed["output"]["kernel"]
    assert all(jax.tree.leaves(optim.decay_mask(params, "all")))
    assert not any(jax.tree.leaves(optim.decay_mask(params, "none")))


def _numpy_adamw(params, grads_seq, *, lr_fn, b1, b2, eps, wd, clip, mask):
    """Plain numpy (float64) global-norm clipping + PyTorch-style AdamW."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g = {k: x.astype(np.float64) for k, x in grads.items()}
        norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
        if norm > clip:
            g = {k: x * clip / norm for k, x in g.items()}
        t = step + 1
        lr = lr_fn(step)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            mhat = m[k] / (1 - b1 ** t)
            vhat = v[k] / (1 - b2 ** t)
            update = mhat / (np.sqrt(vhat) + eps)
            if mask[k]:
                update = update + wd * p[k]
            p[k] = p[k] - lr * update
    return p


def test_adamw_chain_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "scale": (1 + 0.1 * rng.normal(size=(3,))).astype(np.float32)}
    # Large gradients on some steps so that clipping is exercised.
    grads_seq = [{k: (rng.normal(size=x.shape) * (3.0 if i % 2 else 0.2)).astype(np.float32)
                  for k, x in params.items()} for i in range(6)]
    tx = optim.make_optimizer(peak_lr=1e-2, total_steps=6, warmup_steps=2, min_lr_ratio=0.1,
                              b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g in grads_seq:
        p, state = step(p, state, jax.tree.map(jnp.asarray, g))
    want = _numpy_adamw(params, grads_seq,
                        lr_fn=lambda c: optim.lr_at(c, 1e-2, 2, 6, 0.1),
                        b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=1.0,
                        mask={"w": True, "scale": False})
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=2e-5, atol=1e-7)
    # The scale (a vector) did not decay; the matrix did: without decay it differs.
    no_decay = _numpy_adamw(params, grads_seq, lr_fn=lambda c: optim.lr_at(c, 1e-2, 2, 6, 0.1),
                            b1=0.9, b2=0.95, eps=1e-8, wd=0.0, clip=1.0,
                            mask={"w": False, "scale": False})
    assert not np.allclose(no_decay["w"], want["w"], rtol=1e-6)
    np.testing.assert_allclose(no_decay["scale"], want["scale"], rtol=1e-12)


def test_skip_nonfinite_leaves_params_unchanged():
    tx = optim.make_optimizer(peak_lr=1e-2, total_steps=10, warmup_steps=0, skip_nonfinite=True)
    p = {"w": jnp.ones((2, 2))}
    state = tx.init(p)
    bad = {"w": jnp.array([[jnp.nan, 1.0], [1.0, 1.0]])}
    updates, state = tx.update(bad, state, p)
    assert np.all(np.asarray(optax.apply_updates(p, updates)["w"]) == 1.0)
    good = {"w": jnp.full((2, 2), 0.5)}
    updates, state = tx.update(good, state, p)
    assert np.all(np.asarray(optax.apply_updates(p, updates)["w"]) < 1.0)
    assert int(state.total_notfinite) == 1
    # The schedule saw one update (the skipped one did not count).
    assert int(optim.schedule_count(state)) == 1
    assert optim.schedule_count({"no": "schedule"}) is None


def test_paper_defaults():
    import inspect

    sig = inspect.signature(optim.make_optimizer)
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert defaults["b1"] == 0.9 and defaults["b2"] == 0.95
    assert defaults["weight_decay"] == 0.1 and defaults["clip_norm"] == 1.0
    assert defaults["warmup_steps"] == 2000 and defaults["min_lr_ratio"] == 0.1
    assert defaults["mask"] == "matrices"
