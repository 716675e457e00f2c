"""Checkpoints: async save/restore, keep-K, other mesh shapes, torn saves, preemption, load_params."""

import os
import signal
import time

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from llama_jax.convert.layout import checkpoint_dir
from llama_jax.convert.workdir import load_params
from llama_jax.distributed import PreemptionHandler
from llama_jax.errors import ConfigError
from llama_jax.train import checkpoint as ck


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    params: dict
    opt_state: dict


def _state(mesh, spec, step=3):
    w = jnp.arange(64.0).reshape(8, 8) + step
    shard = NamedSharding(mesh, spec)
    params = {"layers": {"w": jax.device_put(w, shard)}, "norm": {"scale": jnp.ones(8) * step}}
    return ToyState(step=jnp.int32(step), params=params,
                    opt_state={"mu": jax.device_put(w * 0.5, shard)})


def _abstract(state, mesh, spec):
    def one(x):
        sh = NamedSharding(mesh, spec if x.ndim == 2 else P())
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
    return jax.tree.map(one, state)


def _iterator():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _meta(dim=64):
    return {"model_config": {"dim": dim, "n_layers": 2, "n_heads": 4, "n_kv_heads": None,
                             "vocab_size": 128, "multiple_of": 32, "ffn_dim_multiplier": None,
                             "hidden_dim": None, "norm_eps": 1e-6, "rope_theta": 10000.0,
                             "max_seq_len": 64, "dtype": "float32", "param_dtype": "float32",
                             "attention_impl": "xla", "remat_policy": "none",
                             "scan_layers": True}}


def test_async_save_restore_other_mesh_and_iterator(tmp_path):
    mesh8 = jax.make_mesh((8,), ("data",))
    state = _state(mesh8, P("data"))
    it = _iterator()
    for _ in range(5):
        next(it)
    c = ck.Checkpointer(tmp_path / "checkpoints", every=1, keep=2, async_save=True)
    assert c.save(3, state, rng=jax.random.key(7), meta=_meta(), data_iterator=it, force=True)
    c.close()
    assert c.all_steps() == [3]
    # Restore onto a 2x4 mesh with a different layout; a fresh iterator resumes at 5.
    mesh24 = jax.make_mesh((2, 4), ("a", "b"))
    target = _abstract(state, mesh24, P("b", "a"))
    it2 = _iterator()
    c2 = ck.Checkpointer(tmp_path / "checkpoints", every=1, keep=2)
    restored, rng, meta = c2.restore(3, target, abstract_rng=jax.random.key(0), data_iterator=it2)
    c2.close()
    np.testing.assert_array_equal(np.asarray(restored.params["layers"]["w"]),
                                  np.asarray(state.params["layers"]["w"]))
    assert restored.params["layers"]["w"].sharding.spec == P("b", "a")
    assert restored.params["layers"]["w"].sharding.mesh.shape == {"a": 2, "b": 4}
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(7)))
    assert meta["step"] == 3 and meta["model_config"]["dim"] == 64
    assert next(it2) == 5


def test_keeps_last_k_and_ignores_unfinished_saves(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    c = ck.Checkpointer(tmp_path, every=2, keep=2, with_data=False)
    assert not c.should_save(1) and c.should_save(2) and not c.should_save(0)
    for step in (2, 4, 6):
        c.save(step, _state(mesh, P("data"), step), rng=jax.random.key(0), meta=_meta(),
               force=True)
    c.close()
    assert c.all_steps() == [4, 6]
    # A save killed mid-write leaves orbax's temporary directory (and maybe a
    # half-written file) behind, never a final step name.
    torn = tmp_path / "8.orbax-checkpoint-tmp-1234567"
    (torn / "state").mkdir(parents=True)
    (torn / "state" / "manifest.ocdbt").write_bytes(b"\x00garbage")
    c2 = ck.Checkpointer(tmp_path, every=2, keep=2, with_data=False)
    assert c2.latest_step() == 6
    target = _abstract(_state(mesh, P("data")), mesh, P(None, "data"))
    restored, _, meta = c2.restore(6, target, abstract_rng=jax.random.key(0))
    assert int(restored.step) == 6 and meta["step"] == 6
    # The next save of step 8 goes through despite the leftover.
    c2.save(8, _state(mesh, P("data"), 8), rng=jax.random.key(0), meta=_meta(), force=True)
    c2.close()
    assert c2.all_steps() == [6, 8]


def test_restore_into_a_different_state_shape_is_a_clear_error(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    c = ck.Checkpointer(tmp_path, every=1, keep=1, with_data=False)
    c.save(1, _state(mesh, P("data")), rng=jax.random.key(0), meta=_meta(), force=True)
    c.close()
    wrong = _abstract(_state(mesh, P("data")), mesh, P())
    wrong = wrong.replace(params={"layers": {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)},
                                  "norm": wrong.params["norm"]})
    with pytest.raises(ValueError, match=r"(?s)other shapes.*train_state/params/layers/w: "
                                         r"checkpoint \(8, 8\), this run \(4, 4\).*fresh --workdir"):
        ck.Checkpointer(tmp_path, every=1, keep=1, with_data=False).restore(
            1, wrong, abstract_rng=jax.random.key(0))


def test_model_mismatch_names_fields():
    from llama_jax.model.config import LlamaConfig

    saved = _meta(dim=64)["model_config"]
    ck.check_model_matches(saved, LlamaConfig.from_dict(saved), "/w")  # same: fine
    ck.check_model_matches(saved, LlamaConfig.from_dict(saved).replace(remat_policy="full"), "/w")
    with pytest.raises(ConfigError, match=r"(?s)different model.*dim: checkpoint has 64, config asks "
                                          r"for 128.*n_layers.*fresh --workdir"):
        ck.check_model_matches(saved, LlamaConfig.from_dict(saved).replace(dim=128, n_layers=3), "/w")


def test_load_params_from_workdir_and_step_dir(tmp_path, tiny_config):
    import flax.linen as nn

    from llama_jax.model import abstract_params

    rng = np.random.default_rng(0)  # random values in the model's parameter shapes
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape).astype(s.dtype)),
                          nn.meta.unbox(abstract_params(tiny_config)))
    state = ToyState(step=jnp.int32(5), params=params, opt_state={"count": jnp.int32(5)})
    c = ck.Checkpointer(checkpoint_dir(tmp_path), every=1, keep=3, with_data=False)
    c.save(5, state, rng=jax.random.key(0), meta={"model_config": tiny_config.to_dict()}, force=True)
    c.close()
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "5"):
        cfg, loaded = load_params(path)
        assert cfg == tiny_config
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     params, loaded)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_params(tmp_path / "nothing")


def test_preemption_handler_sets_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler() as h:
        assert not h.requested and not h.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if h.requested:
                break
            time.sleep(0.01)
        assert h.requested and h.reached(2) and h.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_preemption_service_probe_uses_public_jax_api():
    """One process: no JAX preemption service, the local flag decides; the probe
    reads only public API (jax._src moves between releases, e.g. 0.10 -> 0.11)."""
    import inspect

    assert not PreemptionHandler._jax_service()
    assert "jax._src" not in inspect.getsource(ck)
