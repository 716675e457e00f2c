"""The sharded train step equals the single-device one on every mesh shape.

On 8 fake CPU devices: loss, gradients and parameters after one optimizer
step on (data, fsdp, tensor, sequence) meshes match one device within 1e-5
(relative, float32), with packed segment ids in the batch, and the step
compiles once. The single-device step itself is checked against a plain-jnp
loss, `jax.grad` and a direct optax update. Gradient accumulation over k
microbatches equals the one-big-batch step.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llama_jax import sharding as shd
from llama_jax.model import Llama, LlamaConfig
from llama_jax.train import step as st

MESH_SHAPES = [(8, 1, 1, 1), (1, 8, 1, 1), (1, 1, 8, 1), (1, 1, 1, 8), (2, 2, 2, 1), (1, 2, 2, 2)]
B, L = 8, 16
RTOL = 1e-5
# The conftest `tiny_config` with the paper's remat policy (the production
# path; tests/test_remat.py shows it gives the gradients of no remat).
CONFIG = LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=8, vocab_size=256,
                     multiple_of=32, max_seq_len=64, remat_policy="save_linear")


class CaptureState(NamedTuple):
    grads: object


def capture_grads() -> optax.GradientTransformation:
    """A test probe: passes updates through and keeps them in its state, so
    the gradients the train step computed can be read from `opt_state`."""

    def init(params):
        return CaptureState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del state, params
        return updates, CaptureState(updates)

    return optax.GradientTransformation(init, update)


# Adam's first step is lr * g / (|g| + eps): with eps=1e-8 an element whose
# gradient is ~1e-8 turns float32 round-off in g (different reduction orders
# on different meshes) into update differences of 1e-4 relative. eps=1e-4
# keeps the step well-conditioned, so 1e-5 measures the sharding, not Adam.
OPTIMIZER = optax.chain(capture_grads(), optax.clip_by_global_norm(1.0),
                        optax.adamw(1e-2, eps=1e-4, weight_decay=0.1))
# Meshes whose state comes from the jitted, sharded `init_train_state`; the
# others get the reference state with `device_put` (each jitted init is one
# more XLA compile, seconds on a 2-core machine).
JIT_INIT = {(1, 1, 1, 1), (2, 2, 2, 1), (1, 2, 2, 2)}


def make_batch(seed: int) -> dict[str, np.ndarray]:
    """Packed rows: 1-3 documents per row, restarting positions, padding (0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, size=(B, L + 1)).astype(np.int32)
    segment_ids = np.zeros((B, L), np.int32)
    positions = np.zeros((B, L), np.int32)
    for r in range(B):
        end = L - int(rng.integers(0, 4))  # trailing padding
        cuts = sorted(rng.choice(np.arange(2, end - 1), size=int(rng.integers(0, 3)), replace=False))
        bounds = [0, *cuts, end]
        for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            segment_ids[r, a:b] = s + 1
            positions[r, a:b] = np.arange(b - a)
    loss_mask = (segment_ids != 0) & (rng.random((B, L)) > 0.2)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions,
            "segment_ids": segment_ids, "loss_mask": loss_mask.astype(np.float32)}


def _np(tree):
    return jax.tree.map(lambda x: np.array(x), tree)  # copies: no views of jax buffers


@functools.cache
def run(shape: tuple[int, ...], grad_accum_steps: int = 1) -> dict:
    """Init on a mesh of `shape`, two train steps; numpy results (cached)."""
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = shd.make_mesh(shape, devices)
    rules = shd.DEFAULT_RULES
    if shape in JIT_INIT:
        state, shardings = st.init_train_state(CONFIG, OPTIMIZER, mesh, rules, jax.random.key(0))
    else:
        _, shardings = st.abstract_train_state(CONFIG, OPTIMIZER, mesh, rules)
        # Via jnp.array: on CPU a device_put of numpy may alias the numpy
        # buffer, and such buffers cannot be donated.
        state = jax.device_put(jax.tree.map(jnp.array, run((1, 1, 1, 1))["init_state"]), shardings)
    init_state = _np(state)
    train_step = st.make_train_step(CONFIG, OPTIMIZER, mesh, rules, shardings,
                                    grad_accum_steps=grad_accum_steps)
    old_leaf = jax.tree.leaves(state.params)[0]
    state, m1 = train_step(state, st.global_batch(mesh, make_batch(1)))
    donated = old_leaf.is_deleted()
    out_specs = jax.tree.map(lambda x: x.sharding.spec, state.params)
    want_specs = jax.tree.map(lambda s: s.spec, shardings.params)
    after1 = {"params": _np(state.params), "grads": _np(state.opt_state[0].grads),
              "step": int(state.step)}
    state, m2 = train_step(state, st.global_batch(mesh, make_batch(2)))
    return {"init": init_state.params, "init_state": init_state, "after1": after1,
            "m1": _np(m1), "m2": _np(m2), "trace_count": train_step.trace_count, "donated": donated,
            "specs_ok": out_specs == want_specs, "specs": want_specs}


def assert_rel_close(got, want, rtol=RTOL, what=""):
    """Same tree, shapes and dtypes; per leaf: max |got - want| <= rtol * max |want|."""
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(paths, jax.tree.leaves(got), strict=True):
        err = np.max(np.abs(np.asarray(g, np.float64) - w)) / max(np.max(np.abs(w)), 1e-30)
        assert err <= rtol, f"{what}{jax.tree_util.keystr(path)}: relative error {err:.2e}"


@pytest.fixture(scope="module")
def reference():
    return run((1, 1, 1, 1))


def plain_loss(params, batch):
    """Masked mean cross-entropy, written independently of `step.loss_fn`."""
    logits = Llama(CONFIG).apply({"params": params}, batch["inputs"],
                                 positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"] * (batch["segment_ids"] != 0)
    return jnp.sum(nll * mask) / jnp.sum(mask)


@jax.jit
def plain_step(params, batch):
    """Loss, grads, grad norm and updated params without `llama_jax.train.step`."""
    loss, grads = jax.value_and_grad(plain_loss)(params, batch)
    updates, _ = OPTIMIZER.update(grads, OPTIMIZER.init(params), params)
    return loss, grads, jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))), optax.apply_updates(params, updates)


def test_single_device_step_matches_plain_reference(reference):
    loss, grads, grad_norm, params = _np(plain_step(reference["init"], make_batch(1)))
    np.testing.assert_allclose(reference["m1"]["loss"], loss, rtol=RTOL)
    assert reference["m1"]["num_tokens"] == float(np.sum(make_batch(1)["loss_mask"]))
    assert_rel_close(reference["after1"]["grads"], grads, what="grads")
    np.testing.assert_allclose(reference["m1"]["grad_norm"], grad_norm, rtol=RTOL)
    assert_rel_close(reference["after1"]["params"], params, what="params")
    assert reference["after1"]["step"] == 1 and reference["trace_count"] == 1


def test_loss_fn_ignores_padding_and_counts_tokens(reference):
    batch = make_batch(3)
    # A bool loss mask that also covers padding: padding still does not count.
    batch_bool = dict(batch, loss_mask=np.ones((B, L), bool))

    @jax.jit
    def losses(params):
        return (st.loss_fn(params, batch, CONFIG), plain_loss(params, batch),
                st.loss_fn(params, batch_bool, CONFIG)[1])

    (loss, count), want, count_bool = losses(reference["init"])
    np.testing.assert_allclose(loss, want, rtol=RTOL)
    assert count == batch["loss_mask"].sum()
    assert count_bool == np.sum(batch["segment_ids"] != 0) > count


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_step_matches_single_device(shape, reference):
    got = run(shape)
    if shape in JIT_INIT:  # the sharded jitted init gives the same numbers
        assert_rel_close(got["init"], reference["init"], rtol=0, what="init ")
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(got["m1"][key], reference["m1"][key], rtol=RTOL, err_msg=key)
    assert got["m1"]["num_tokens"] == reference["m1"]["num_tokens"]
    assert_rel_close(got["after1"]["grads"], reference["after1"]["grads"], what="grads")
    assert_rel_close(got["after1"]["params"], reference["after1"]["params"], what="params")
    np.testing.assert_allclose(got["m2"]["loss"], reference["m2"]["loss"], rtol=RTOL)
    assert got["trace_count"] == 1, "the train step was traced more than once"
    assert got["donated"], "the input state was not donated"
    assert got["specs_ok"], "the output state is not sharded as state_shardings says"


def test_shardings_follow_the_rules():
    specs = run((2, 2, 2, 1))["specs"]
    P = jax.sharding.PartitionSpec
    assert specs["layers"]["attention"]["wq"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["feed_forward"]["w2"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["tok_embeddings"]["embedding"] == P("tensor", "fsdp")
    assert specs["output"]["kernel"] == P("fsdp", "tensor")
    assert specs["norm"]["scale"] == P(None)


def test_grad_accumulation_equals_big_batch():
    big, acc = run((2, 2, 2, 1)), run((2, 2, 2, 1), grad_accum_steps=2)
    # The loss mask gives microbatches different token counts, so a plain
    # mean of microbatch means would differ from the big-batch loss.
    mask = make_batch(1)["loss_mask"]
    assert mask[0::2].sum() != mask[1::2].sum()
    assert acc["m1"]["num_tokens"] == big["m1"]["num_tokens"]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(acc["m1"][key], big["m1"][key], rtol=RTOL, err_msg=key)
    assert_rel_close(acc["after1"]["grads"], big["after1"]["grads"], what="grads")
    assert_rel_close(acc["after1"]["params"], big["after1"]["params"], what="params")
    np.testing.assert_allclose(acc["m2"]["loss"], big["m2"]["loss"], rtol=RTOL)
    assert acc["trace_count"] == 1


def test_grad_accumulation_rejects_non_dividing_batch():
    mesh = shd.make_mesh((8, 1, 1, 1))
    _, shardings = st.abstract_train_state(CONFIG, OPTIMIZER, mesh)
    train_step = st.make_train_step(CONFIG, OPTIMIZER, mesh, shd.DEFAULT_RULES, shardings,
                                    grad_accum_steps=3)
    abstract, _ = st.abstract_train_state(CONFIG, OPTIMIZER, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in make_batch(1).items()}
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by grad_accum_steps=3"):
        train_step.lower(abstract, batch)
    with pytest.raises(ValueError, match="grad_accum_steps=0 must be a positive integer"):
        st.make_train_step(CONFIG, OPTIMIZER, mesh, shd.DEFAULT_RULES, shardings, grad_accum_steps=0)


def test_eval_step_sums_match(reference):
    mesh = shd.make_mesh((1, 2, 2, 2))
    _, shardings = st.abstract_train_state(CONFIG, OPTIMIZER, mesh)
    params = jax.device_put(reference["init"], shardings.params)
    eval_step = st.make_eval_step(CONFIG, mesh, shd.DEFAULT_RULES, shardings.params)
    out = eval_step(params, st.global_batch(mesh, make_batch(1)))
    assert set(out) == {"loss_sum", "num_tokens"}
    np.testing.assert_allclose(out["loss_sum"] / out["num_tokens"], reference["m1"]["loss"], rtol=RTOL)
    assert out["num_tokens"] == reference["m1"]["num_tokens"]


def test_init_never_materialises_the_full_model():
    """The jitted init on an 8-way fsdp mesh: each device's compiled output
    and scratch hold ~1/8 of the params + Adam state, not the whole thing."""
    config = CONFIG.replace(dim=512, n_layers=4, vocab_size=4096)
    mesh = shd.make_mesh((1, 8, 1, 1))
    init, shardings = st.make_init(config, optax.adamw(1e-3), mesh, shd.DEFAULT_RULES)
    mem = init.lower(jax.random.key(0)).compile().memory_analysis()
    abstract, _ = st.abstract_train_state(config, optax.adamw(1e-3), mesh)
    full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert full > 150e6  # params + mu + nu of a ~17M-parameter model
    assert mem.output_size_in_bytes < full / 8 * 1.05
    assert mem.temp_size_in_bytes < full / 8


@pytest.mark.parametrize("tensor", [1, 2])
def test_cross_entropy_gathers_unless_the_vocab_is_split(tensor):
    """The loss picks the target logit by a gather when each device holds the whole
    vocab, by a one-hot contraction over a `tensor`-split vocab; both equal
    log_softmax's NLL, with the loss mask and padding (segment 0) left out."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 6, 32)) * 3, jnp.float32)  # [batch, len, vocab]
    batch = {"targets": jnp.asarray(rng.integers(0, 32, (4, 6)), jnp.int32),
             "loss_mask": jnp.asarray(rng.integers(0, 2, (4, 6)), jnp.int32),
             "segment_ids": jnp.asarray(np.r_[np.ones((3, 6)), np.zeros((1, 6))], jnp.int32)}
    mask = np.asarray(batch["loss_mask"]) * (np.asarray(batch["segment_ids"]) != 0)
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                              np.asarray(batch["targets"])[..., None], -1)[..., 0]
    mesh = shd.make_mesh((1, 8 // tensor, tensor, 1))
    with shd.activate(mesh):
        total, count = jax.jit(st.masked_nll_sums)(logits, batch)
        jaxpr = str(jax.make_jaxpr(st.masked_nll_sums)(logits, batch))
    assert float(count) == mask.sum()
    np.testing.assert_allclose(float(total), (nll * mask).sum(), rtol=1e-6)
    assert ("gather" in jaxpr) == (tensor == 1)
