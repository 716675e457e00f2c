"""Shared set-up for the conversion tests (test_convert.py, test_convert_errors.py).

Random tiny HF models (MHA and GQA, weights drawn with a large std and norm
scales away from 1 so layout mistakes show) saved by transformers itself; the
same weights written as Meta checkpoints (1 and 2 shards) by our converter;
comparison helpers. Import the fixtures into a test module by name.
"""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama_jax import Llama  # noqa: E402
from llama_jax.convert import from_pretrained, save_pretrained  # noqa: E402

TOKENS = np.random.RandomState(0).randint(0, 128, size=(2, 12))

HF_CONFIGS = {
    # Off-rule FFN width (explicit hidden_dim), 4 heads of 16.
    "mha": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, intermediate_size=96, vocab_size=128,
                max_position_embeddings=64, rms_norm_eps=1e-5),
    # 4 query heads per KV head, another RoPE base.
    "gqa": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, intermediate_size=192, vocab_size=128,
                max_position_embeddings=64, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}


def make_hf_model(kind, tie=False, seed=0):
    """A random HF Llama with large weights and non-trivial norm scales."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**HF_CONFIGS[kind], tie_word_embeddings=tie,
                                   initializer_range=0.2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def hf_logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


@functools.cache
def _apply_fn(config):
    return jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))


def our_logits(config, params, tokens=TOKENS):
    return np.asarray(_apply_fn(config)(params, jnp.asarray(tokens)))


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def trees_equal(a, b):
    """Same structure, dtypes and bits."""
    fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return False
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
               for (_, x), (_, y) in zip(fa, fb, strict=True))


def hf_permute(w, n_heads, dim1, dim2):
    """HF's convert_llama_weights_to_hf.permute, verbatim in torch."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


@pytest.fixture(scope="module", params=["mha", "gqa"])
def hf_ckpt(request, tmp_path_factory):
    """(kind, HF directory written by transformers, the model, its logits)."""
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return request.param, path, model, hf_logits(model)


@pytest.fixture(scope="module")
def loaded(hf_ckpt):
    kind, path, _, _ = hf_ckpt
    return from_pretrained(path)


@pytest.fixture(scope="module")
def meta_dirs(loaded, tmp_path_factory):
    """The HF weights written as Meta checkpoints with 1 and 2 shards."""
    config, params = loaded
    root = tmp_path_factory.mktemp("meta")
    save_pretrained(config, params, root / "one", format="meta")
    save_pretrained(config, params, root / "two", format="meta", shards=2)
    return root / "one", root / "two"


def meta_split_axis(name):
    """Meta's fairscale split: ColumnParallelLinear (output features), RowParallelLinear and
    ParallelEmbedding (input features / embedding dim); norms are replicated."""
    if name == "output.weight" or name.endswith(("attention.wq.weight", "attention.wk.weight",
                                                 "attention.wv.weight", "feed_forward.w1.weight",
                                                 "feed_forward.w3.weight")):
        return 0
    if name == "tok_embeddings.weight" or name.endswith(("attention.wo.weight",
                                                         "feed_forward.w2.weight")):
        return 1
    return None


def load_pth(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))

