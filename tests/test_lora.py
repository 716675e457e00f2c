"""LoRA: only adapters train and are checkpointed; the merged export equals the unmerged model.

A random tiny Llama saved by transformers is finetuned with LoRA on wq, wv
and w2. Checked: the checkpoint's params are the adapters alone (no base
weight, no base-shaped optimizer moments); the base weights are untouched;
``from_pretrained`` of the workdir merges ``W + alpha/r A B``; the merged HF
export, reloaded in transformers, gives the logits of the *unmerged* model:
transformers' base model with the adapters added on the projections'
activations by forward hooks (``y = x W^T + s (x A) B``, B's rows in HF's
rotary order via HF's own permute). Adapters shard like their kernels; a
resume from the step-4 checkpoint equals the uninterrupted run bitwise.
"""

import shutil

import jax
import ml_collections
import numpy as np
import pytest
import sft_helpers as sh
import train_helpers as th

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from convert_helpers import hf_permute  # noqa: E402

from llama_jax import sharding as shd  # noqa: E402
from llama_jax.convert import from_pretrained, save_pretrained  # noqa: E402
from llama_jax.convert.workdir import load_params  # noqa: E402
from llama_jax.errors import ConfigError  # noqa: E402
from llama_jax.model.config import LlamaConfig  # noqa: E402
from llama_jax.model.lora import LoraConfig, merge  # noqa: E402
from llama_jax.train import metrics, optim  # noqa: E402
from llama_jax.train.loop import train_and_evaluate  # noqa: E402
from llama_jax.train.lora_state import lora_state  # noqa: E402

RANK, ALPHA, TARGETS = 4, 8.0, ("wq", "wv", "w2")
STEPS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    root = th.make_data(tmp / "data")
    hf_dir = sh.make_hf_checkpoint(root, tmp / "hf")
    data = sh.write_chat(tmp / "chat.jsonl")
    return root, hf_dir, data


def _config(setup, **kw):
    root, hf_dir, data = setup
    c = th.micro_config(root, **{**sh.init_overrides(hf_dir, data), "train.steps": STEPS,
                                 "checkpoint.every": 4, "checkpoint.keep": 5, **kw})
    c.model.lora.rank, c.model.lora.alpha, c.model.lora.targets = RANK, ALPHA, TARGETS
    return c


def _losses(wd):
    return {r["step"]: r["loss"] for r in metrics.read_metrics(wd) if "loss" in r}


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    assert train_and_evaluate(_config(setup), str(wd)).status == "completed"
    return wd


def test_only_adapters_train_and_are_checkpointed(setup, trained):
    _, hf_dir, _ = setup
    _, adapters = load_params(trained / "checkpoints" / str(STEPS))
    leaves = jax.tree_util.tree_leaves_with_path(adapters)
    names = {jax.tree_util.keystr(p) for p, _ in leaves}
    assert names == {f"['layers']['{m}']['{t}']['{ab}']" for t, m in
                     (("wq", "attention"), ("wv", "attention"), ("w2", "feed_forward"))
                     for ab in ("lora_a", "lora_b")}
    assert all(np.abs(np.asarray(x)).max() > 0 for _, x in leaves)  # B moved off zero
    meta = (trained / "checkpoints" / str(STEPS) / "state").rglob("*")
    assert not any("tok_embeddings" in str(p) or "kernel" in str(p) for p in meta)
    # The merged model = the untouched base + s A B on the targets, the base elsewhere.
    cfg, merged = from_pretrained(trained)
    _, base = from_pretrained(hf_dir, dtype="float32")
    want = merge(base, adapters, LoraConfig(RANK, ALPHA, TARGETS))
    for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(merged),
                              jax.tree_util.tree_leaves_with_path(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
    assert np.array_equal(merged["layers"]["attention"]["wk"]["kernel"],
                          base["layers"]["attention"]["wk"]["kernel"])
    assert not np.array_equal(merged["layers"]["attention"]["wq"]["kernel"],
                              base["layers"]["attention"]["wq"]["kernel"])


def test_merged_export_equals_unmerged_model(setup, trained, tmp_path):
    _, hf_dir, _ = setup
    cfg, merged = from_pretrained(trained)
    _, adapters = load_params(trained / "checkpoints" / str(STEPS))
    out = save_pretrained(cfg, merged, tmp_path / "hf", format="hf")
    tokens = torch.tensor(np.random.RandomState(0).randint(0, th.VOCAB, size=(2, 20)))
    with torch.no_grad():
        exported = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
        got = exported.eval()(tokens).logits.numpy()
        base = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        s, d, h = ALPHA / RANK, cfg.dim, cfg.n_heads
        hooks = []
        for i, layer in enumerate(base.model.layers):
            ad = jax.tree.map(lambda x, i=i: torch.tensor(np.asarray(x)[i]), adapters["layers"])
            aq, bq = ad["attention"]["wq"]["lora_a"], ad["attention"]["wq"]["lora_b"].reshape(RANK, -1)
            bq = hf_permute(bq.T.contiguous(), h, d, RANK).T  # HF rotary row order
            av, bv = ad["attention"]["wv"]["lora_a"], ad["attention"]["wv"]["lora_b"].reshape(RANK, -1)
            a2, b2 = ad["feed_forward"]["w2"]["lora_a"], ad["feed_forward"]["w2"]["lora_b"]
            for mod, a, b in ((layer.self_attn.q_proj, aq, bq), (layer.self_attn.v_proj, av, bv),
                              (layer.mlp.down_proj, a2, b2)):
                hooks.append(mod.register_forward_hook(
                    lambda m, inp, y, a=a, b=b: y + s * (inp[0] @ a) @ b))
        unmerged = base(tokens).logits.numpy()
        for hk in hooks:
            hk.remove()
        plain = base(tokens).logits.numpy()
    np.testing.assert_allclose(got, unmerged, rtol=1e-4, atol=1e-4)
    assert np.abs(got - plain).max() > 1e-3  # the adapters changed the model


def test_adapters_shard_like_their_kernels():
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=16,
                      max_seq_len=32)
    mesh = shd.make_mesh((1, 2, 4, 1))  # data, fsdp, tensor, sequence
    tx = optim.optimizer_from_config(_config_opt(), 10)
    _, _, sh_ = lora_state(cfg, LoraConfig(4, 8.0, ("wq", "wo", "w1")), tx, mesh,
                           shd.DEFAULT_RULES)
    att, ffn = sh_.params["layers"]["attention"], sh_.params["layers"]["feed_forward"]
    spec = lambda x: tuple(x.spec)  # noqa: E731
    assert spec(att["wq"]["lora_a"]) == (None, "fsdp", None)  # [layers, embed, r]
    assert spec(att["wq"]["lora_b"]) == (None, None, "tensor", None)  # [layers, r, heads, kv]
    assert spec(att["wo"]["lora_a"]) == (None, "tensor", None, None)  # [layers, heads, kv, r]
    assert spec(att["wo"]["lora_b"]) == (None, None, "fsdp")  # [layers, r, embed]
    assert spec(ffn["w1"]["lora_b"]) == (None, None, "tensor")  # [layers, r, mlp]


def _config_opt():
    return ml_collections.ConfigDict({"lr": 1e-3, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
                                      "weight_decay": 0.0, "warmup_steps": 1,
                                      "min_lr_ratio": 0.1, "clip_norm": 1.0,
                                      "decay_mask": "matrices"})


def test_resume_from_an_adapter_checkpoint_is_bitwise_equal(setup, trained, tmp_path):
    wd = tmp_path / "resumed"
    shutil.copytree(trained, wd)
    shutil.rmtree(wd / "checkpoints" / str(STEPS))  # as if killed after step 4's save
    result = train_and_evaluate(_config(setup), str(wd))
    assert result.start_step == 4 and result.status == "completed"
    assert _losses(wd) == _losses(trained)


def test_lora_needs_an_init_checkpoint(setup, tmp_path):
    c = _config(setup)
    c.init.checkpoint = ""
    with pytest.raises(ConfigError, match=r"model.lora.rank > 0 .*--config.init.checkpoint"):
        train_and_evaluate(c, str(tmp_path / "wd"))
    c = _config(setup)
    c.model.lora.targets = ("wq", "wz")
    with pytest.raises(ConfigError, match=r"model.lora: lora targets \['wz'\]"):
        train_and_evaluate(c, str(tmp_path / "wd2"))
