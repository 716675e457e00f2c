"""Meshes, rules and derived shardings; each user error has a clear message."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from llama_jax import sharding as shd
from llama_jax.model import Llama, abstract_params, get_preset

P = PartitionSpec


def _without(rules, name):
    return tuple(r for r in rules if r[0] != name)


# ---------------------------------------------------------------- meshes


def test_make_mesh_fills_minus_one():
    mesh = shd.make_mesh((2, -1, 2, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 4


def test_mesh_product_must_equal_device_count():
    with pytest.raises(ValueError, match=r"has 16 devices but 8 are available"):
        shd.make_mesh((2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"8 devices are not divisible by the fixed axes' product 3"):
        shd.make_mesh((3, -1, 1, 1))
    with pytest.raises(ValueError, match=r"at most one axis may be -1"):
        shd.make_mesh((-1, -1, 1, 1))


def test_mesh_from_config():
    cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 4, "tensor": 2, "sequence": 1})
    assert dict(shd.mesh_from_config(cfg).shape) == {"data": 1, "fsdp": 4, "tensor": 2, "sequence": 1}
    # `data` takes the rest when no axis says -1.
    assert dict(shd.mesh_from_config({"tensor": 2}).shape)["data"] == 4
    assert dict(shd.mesh_from_config(None).shape)["data"] == 8
    # A `dcn` part on one host: its product must be the number of hosts.
    mesh = shd.mesh_from_config({"data": 2, "fsdp": -1, "dcn": {"data": 1}})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
    with pytest.raises(ValueError, match=r"mesh.dcn .* has product 2 but there are 1 hosts/slices"):
        shd.mesh_from_config({"data": 8, "dcn": {"data": 2}})
    with pytest.raises(ValueError, match=r"has 16 devices but 8 are available"):
        shd.mesh_from_config({"data": 4, "fsdp": 4})


# ---------------------------------------------------------------- rules


def test_rules_override_and_validation():
    rules = shd.make_rules({"mlp": None, "activation_length": ["sequence"]})
    d = dict(rules)
    assert d["mlp"] is None and d["activation_length"] == "sequence"
    assert [n for n, _ in rules] == [n for n, _ in shd.DEFAULT_RULES]  # replaced in place
    # The same parser reads the config's string form, a ConfigDict and pairs.
    from_text = shd.make_rules("mlp=tensor+sequence, vocab=")
    assert dict(from_text)["mlp"] == ("tensor", "sequence") and dict(from_text)["vocab"] is None
    assert shd.make_rules(ml_collections.ConfigDict({"vocab": None})) == \
        shd.make_rules([("vocab", None)]) == shd.make_rules("vocab=")
    assert shd.make_rules("") == shd.make_rules(None) == shd.DEFAULT_RULES
    # A logical name without a rule is an error in every form, never appended.
    for bad in ({"experts": "data"}, "experts=data", [("experts", "data")]):
        with pytest.raises(ValueError, match=r"unknown logical axis 'experts'.*'activation_batch'"):
            shd.make_rules(bad)
    with pytest.raises(ValueError, match=r"sharding rule 'mlp': unknown mesh axis 'model'"):
        shd.make_rules({"mlp": "model"})
    with pytest.raises(ValueError, match=r"entry 'embed' must look like 'logical=axis'"):
        shd.make_rules("embed")


def test_logical_to_spec():
    rules = shd.DEFAULT_RULES
    spec = shd.logical_to_spec(("activation_batch", "activation_length", "activation_embed"), rules)
    assert spec == P(("data", "fsdp"), "sequence", None)
    assert shd.logical_to_spec(("layers", "embed", "mlp"), rules) == P(None, "fsdp", "tensor")
    # Two names that want the same mesh axis: the earlier rule wins.
    assert shd.logical_to_spec(("heads", "mlp"), rules) == P("tensor", None)
    with pytest.raises(ValueError, match=r"unknown logical axis 'bogus'.*add a rule for 'bogus'"):
        shd.logical_to_spec(("embed", "bogus"), rules)


def test_data_sharding():
    mesh = shd.make_mesh((2, 2, 1, 2))
    assert shd.data_sharding(mesh).spec == P(("data", "fsdp"), "sequence")


# ---------------------------------------------------------------- parameters


def test_param_shardings_derived_from_names(tiny_config):
    mesh = shd.make_mesh((2, 2, 2, 1))
    sh = shd.logical_shardings(abstract_params(tiny_config), mesh)
    assert sh["layers"]["attention"]["wk"]["kernel"].spec == P(None, "fsdp", "tensor", None)
    assert sh["layers"]["attention"]["wo"]["kernel"].spec == P(None, "tensor", None, "fsdp")
    assert sh["layers"]["ffn_norm"]["scale"].spec == P(None, None)
    assert sh["tok_embeddings"]["embedding"].spec == P("tensor", "fsdp")


def test_65b_shardings_without_allocation():
    """The 65B model on a 2048-device (abstract) mesh: each device holds 1/512."""
    config = get_preset("llama_65b")
    mesh = AbstractMesh((4, 64, 8, 1), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    boxed = abstract_params(config)  # eval_shape: nothing allocated
    sh = shd.logical_shardings(boxed, mesh)
    shapes = jax.tree.leaves(jax.tree.map(lambda b: b.unbox(), boxed, is_leaf=shd.is_boxed))
    total = sum(math.prod(x.shape) for x in shapes)
    per_device = sum(math.prod(s.shard_shape(x.shape))
                     for x, s in zip(shapes, jax.tree.leaves(sh), strict=True))
    assert 65.0e9 < total < 65.6e9
    # Norm scales (2 per layer + the final one) are replicated; every other
    # weight is split 64 (fsdp) x 8 (tensor) = 512 ways.
    norms = (2 * config.n_layers + 1) * config.dim
    assert per_device == (total - norms) // 512 + norms


def test_33b_heads_do_not_divide_tensor_8():
    config = get_preset("llama_33b")  # 52 heads
    mesh = AbstractMesh((1, 8, 8, 1), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    with pytest.raises(ValueError, match=(
            r"parameter 'layers/attention/wk/kernel': dimension 2 \('kv_heads'\) of size 52 "
            r"is not divisible by mesh axis 'tensor' of size 8")):
        shd.logical_shardings(abstract_params(config), mesh)


def test_non_dividing_dimension(tiny_config):
    config = tiny_config.replace(vocab_size=250)
    mesh = shd.make_mesh((2, 1, 4, 1))
    with pytest.raises(ValueError, match=(
            r"parameter 'output/kernel': dimension 1 \('vocab'\) of size 250 is not divisible "
            r"by mesh axis 'tensor' of size 4; change the mesh shape or the rule for 'vocab'")):
        shd.logical_shardings(abstract_params(config), mesh)


def test_lenient_shardings_replicate_only_non_dividing_dimensions(tiny_config):
    mesh = shd.make_mesh((1, 2, 4, 1))
    odd = shd.logical_shardings(abstract_params(tiny_config.replace(vocab_size=250)), mesh,
                                strict=False)
    even = shd.logical_shardings(abstract_params(tiny_config), mesh)  # 256 % 4 == 0
    # Vocab (250 over tensor=4) loses its mesh axis; embed keeps fsdp.
    assert odd["output"]["kernel"].spec == P("fsdp", None)
    assert odd["tok_embeddings"]["embedding"].spec == P(None, "fsdp")
    assert even["output"]["kernel"].spec == P("fsdp", "tensor")
    flat_odd = jax.tree_util.tree_flatten_with_path(odd)[0]
    flat_even = jax.tree_util.tree_flatten_with_path(even)[0]
    for (path, a), (_, b) in zip(flat_odd, flat_even, strict=True):
        if "output" not in str(path) and "tok_embeddings" not in str(path):
            assert a.spec == b.spec, path  # everything else as in strict mode
    # strict=False on a dividing mesh is the strict result.
    assert jax.tree.map(lambda x: x.spec, shd.logical_shardings(
        abstract_params(tiny_config), mesh, strict=False)) == jax.tree.map(lambda x: x.spec, even)
    # 33B's 52 KV heads on tensor=8: replicated over tensor, still sharded on fsdp.
    config = get_preset("llama_33b")
    big = AbstractMesh((1, 8, 8, 1), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    sh = shd.logical_shardings(abstract_params(config), big, strict=False)
    assert sh["layers"]["attention"]["wk"]["kernel"].spec == P(None, "fsdp", None, None)
    assert sh["layers"]["feed_forward"]["w1"]["kernel"].spec == P(None, "fsdp", "tensor")
    # One leaf at a time, too.
    leaf = abstract_params(config)["layers"]["attention"]["wq"]["kernel"]
    assert shd.leaf_sharding("wq", leaf, big, strict=False).spec == P(None, "fsdp", None, None)
    with pytest.raises(ValueError, match=r"parameter 'wq': dimension 2 \('heads'\) of size 52"):
        shd.leaf_sharding("wq", leaf, big)


def test_lenient_shardings_still_reject_unknown_logical_names(tiny_config):
    mesh = shd.make_mesh((8, 1, 1, 1))
    rules = _without(shd.DEFAULT_RULES, "mlp")
    with pytest.raises(ValueError, match=(
            r"parameter 'layers/feed_forward/w1/kernel': unknown logical axis 'mlp'")):
        shd.logical_shardings(abstract_params(tiny_config), mesh, rules, strict=False)


def test_data_sharding_with_whole_length():
    mesh = shd.make_mesh((2, 2, 1, 2))
    sh = shd.data_sharding(mesh, shard_length=False)
    assert sh.spec == P(("data", "fsdp"), None)
    # Any length fits, e.g. an evaluation bucket of 33 tokens on sequence=2.
    x = jax.device_put(np.zeros((4, 33), np.int32), sh)
    assert x.addressable_shards[0].data.shape == (1, 33)


def test_parameter_with_no_rule(tiny_config):
    mesh = shd.make_mesh((8, 1, 1, 1))
    rules = _without(shd.DEFAULT_RULES, "mlp")
    with pytest.raises(ValueError, match=(
            r"parameter 'layers/feed_forward/w1/kernel': unknown logical axis 'mlp'")):
        shd.logical_shardings(abstract_params(tiny_config), mesh, rules)


def test_parameter_without_logical_names():
    mesh = shd.make_mesh((8, 1, 1, 1))
    tree = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32), "count": jax.ShapeDtypeStruct((), jnp.int32)}
    with pytest.raises(ValueError, match=r"parameter 'w' \(shape \(4, 4\)\) has no logical axis names"):
        shd.logical_shardings(tree, mesh)
    assert shd.logical_shardings({"count": tree["count"]}, mesh)["count"].spec == P()


# ---------------------------------------------------------------- activations


def test_activation_with_unknown_logical_axis(tiny_config):
    mesh = shd.make_mesh((1, 1, 8, 1))
    rules = _without(shd.DEFAULT_RULES, "activation_mlp")
    params = abstract_params(tiny_config)
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    with shd.activate(mesh, rules), pytest.raises(
            ValueError, match=r"activation of shape \(2, 8, 192\): unknown logical axis 'activation_mlp'"):
        jax.eval_shape(lambda p, t: Llama(tiny_config).apply({"params": p}, t), params, tokens)


def test_constraint_applies_only_under_activate():
    x = jnp.arange(64.0).reshape(8, 8)
    names = ("activation_batch", "activation_length")
    assert shd.with_logical_constraint(x, names) is x  # no rules, no mesh: no-op
    mesh = shd.make_mesh((2, 2, 1, 2))
    with shd.activate(mesh):
        y = jax.jit(lambda v: shd.with_logical_constraint(v * 2, names))(x)
    assert y.sharding.spec == P(("data", "fsdp"), "sequence")
    np.testing.assert_array_equal(y, x * 2)


# ---------------------------------------------------------------- the jit-under-mesh wrapper


def test_jitted_step_runs_under_the_mesh_and_counts_traces_like_chex():
    """`JittedStep` resolves logical constraints on its mesh and counts retraces
    exactly as `chex.assert_max_traces` does."""
    mesh = shd.make_mesh((2, 4, 1, 1))

    @chex.assert_max_traces(n=2)
    def f(x):
        y = shd.with_logical_constraint(x * 2.0, ("activation_batch", "activation_embed"))
        return y.sum(axis=1)

    step = shd.JittedStep(f, mesh, shd.DEFAULT_RULES)
    x = jnp.ones((8, 16), jnp.float32)
    np.testing.assert_array_equal(step(x), np.full((8,), 32.0, np.float32))
    step(x + 1.0)  # same shapes: no retrace
    assert step.trace_count == 1
    step(jnp.ones((16, 16), jnp.float32))  # a new shape: one more trace
    assert step.trace_count == 2
    with pytest.raises(AssertionError, match="traced"):
        step(jnp.ones((24, 16), jnp.float32))  # a third shape: chex's limit of 2
    assert step.lower(x).compile() is not None
