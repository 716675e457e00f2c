"""``init.checkpoint``: a run starts from a checkpoint transformers saved, and exports back.

A random tiny `LlamaForCausalLM` is saved by transformers itself (with our
SentencePiece model beside it, as HF Llama releases ship ``tokenizer.model``).
Training from it: the first step's loss equals the loss of the checkpoint's
own weights on that batch (so the weights, not a random init, were used);
shape overrides that contradict it fail before compiling; after a few steps
the workdir exports to HF and transformers' logits equal ours.
"""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers as th

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama_jax.convert import from_pretrained, save_pretrained  # noqa: E402
from llama_jax.errors import ConfigError  # noqa: E402
from llama_jax.model.llama import Llama  # noqa: E402
from llama_jax.train import metrics  # noqa: E402
from llama_jax.train.data import setup_data  # noqa: E402
from llama_jax.train.loop import train_and_evaluate  # noqa: E402
from llama_jax.train.step import loss_fn  # noqa: E402

HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          intermediate_size=96, vocab_size=th.VOCAB, max_position_embeddings=64,
          rms_norm_eps=1e-5)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return th.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def hf_dir(root, tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF, initializer_range=0.05))
    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    model.save_pretrained(out)
    shutil.copy(root / "tok.model", out / "tokenizer.model")
    return out


def _config(root, hf_dir, **kw):
    c = th.micro_config(root, **{"train.steps": 3, "checkpoint.every": 3,
                                 "train.eval_batches": 0, **kw})
    for k in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
        c.model[k] = None  # the shape comes from the checkpoint
    c.init.checkpoint = str(hf_dir)
    c.data.tokenizer = ""  # ... and so does the tokenizer
    return c


def test_first_loss_is_the_checkpoints_loss(root, hf_dir, tmp_path):
    config = _config(root, hf_dir)
    result = train_and_evaluate(config, str(tmp_path / "wd"))
    assert result.status == "completed"
    first = {r["step"]: r["loss"] for r in metrics.read_metrics(tmp_path / "wd") if "loss" in r}[1]
    ckpt_cfg, params = from_pretrained(hf_dir, dtype="float32")
    data = setup_data(config, ckpt_cfg, str(hf_dir / "tokenizer.model"))
    batch = {k: jnp.asarray(v) for k, v in next(data.make_train_iterator()).items()
             if k in data.batch_keys}
    want, _ = loss_fn(params, batch, ckpt_cfg.replace(dtype="float32"))
    assert first == pytest.approx(float(want), rel=1e-5)
    assert (tmp_path / "wd" / "tokenizer.model").read_bytes() == (root / "tok.model").read_bytes()


def test_shape_override_that_contradicts_the_checkpoint_fails(root, hf_dir, tmp_path):
    config = _config(root, hf_dir)
    config.model.dim = 128
    with pytest.raises(ConfigError, match=r"model.dim=128 but the checkpoint has 64"):
        train_and_evaluate(config, str(tmp_path / "wd"))
    config = _config(root, hf_dir)
    config.data.tokenizer = ""
    config.init.checkpoint = str(tmp_path)  # nothing there
    with pytest.raises(ConfigError, match="init.checkpoint="):
        train_and_evaluate(config, str(tmp_path / "wd2"))


def test_finetune_then_export_to_hf_matches_transformers(root, hf_dir, tmp_path):
    wd = tmp_path / "wd"
    assert train_and_evaluate(_config(root, hf_dir), str(wd)).status == "completed"
    cfg, params = from_pretrained(wd)
    _, before = from_pretrained(hf_dir, dtype="float32")
    assert not np.allclose(np.asarray(params["output"]["kernel"]), before["output"]["kernel"])
    out = save_pretrained(cfg, params, tmp_path / "export", format="hf",
                          tokenizer=wd / "tokenizer.model")
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.RandomState(1).randint(0, th.VOCAB, size=(2, 16))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(Llama(cfg.replace(dtype="float32")).apply({"params": params},
                                                                 jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
