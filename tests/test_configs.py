"""Run configs: every file loads, Table 2's values, overrides and their errors."""

import json
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from llama_jax.errors import ConfigError
from llama_jax.train import check_overrides, load_config_file
from llama_jax.train import config as config_base
from llama_jax.train import loop as trainer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
PAPER = str(CONFIG_DIR / "llama.py")

# Table 2 (lr, training tokens) and the shapes of Table 2, by configs/llama.py's argument.
TABLE2 = {
    "7b": dict(lr=3.0e-4, tokens=1.0e12, dim=4096, n_heads=32, n_layers=32),
    "13b": dict(lr=3.0e-4, tokens=1.0e12, dim=5120, n_heads=40, n_layers=40),
    "33b": dict(lr=1.5e-4, tokens=1.4e12, dim=6656, n_heads=52, n_layers=60),
    "65b": dict(lr=1.5e-4, tokens=1.4e12, dim=8192, n_heads=64, n_layers=80),
}
# Every config file with its arguments: (path, arg or None).
ARGS = {"llama": sorted(TABLE2), "context_extend": ["7b", "65b,yarn"],
        "context_extend_tiny": [None, "yarn"]}
CONFIG_SPECS = [(p, arg) for p in CONFIGS for arg in ARGS.get(p.stem, [None])]
TABLE1 = {"commoncrawl": 67.0, "c4": 15.0, "github": 4.5, "wikipedia": 4.5, "books": 4.5,
          "arxiv": 2.5, "stackexchange": 2.0}


def _parse(argv):
    """Parse `argv` with a fresh config_flags definition (as the CLI does)."""
    fv = flags.FlagValues()
    # config_flags finds the override flags in the argv it is given at definition.
    holder = config_flags.DEFINE_config_file("config", None, "cfg", flag_values=fv,
                                             sys_argv=["prog", *argv])
    fv(["prog", *argv])
    return holder.value


def test_config_files_exist():
    assert {p.stem for p in CONFIGS} == {"tiny", "llama", "finetune_tiny", "llama_i",
                                        "context_extend", "context_extend_tiny"}


@pytest.mark.parametrize("path,arg", CONFIG_SPECS,
                         ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_every_config_loads_locked_and_validates(path, arg):
    spec = f"{path}:{arg}" if arg else str(path)
    config = _parse([f"--config={spec}"])
    assert isinstance(config, ml_collections.ConfigDict) and config.is_locked
    mcfg = config_base.validate(config)
    assert mcfg.max_seq_len >= config.train.seq_len
    assert load_config_file(spec).to_dict() == config.to_dict()  # without flags too
    text = path.read_text()
    command = f"configs/{path.name}:{arg}" if arg else f"configs/{path.name}"
    if arg in (None, "7b"):  # the docstring shows the command (for a size, its 7B form)
        assert f"python -m llama_jax.train --config={command} " in text


@pytest.mark.parametrize("arg", ["", "8b", "llama_7b"])
def test_paper_config_names_the_sizes_for_a_missing_or_unknown_size(arg):
    spec = f"{PAPER}:{arg}" if arg else PAPER
    with pytest.raises(ConfigError, match=r"7b, 13b, 33b, 65b"):
        load_config_file(spec)
    with pytest.raises(flags.IllegalFlagValueError, match=r"7b, 13b, 33b, 65b"):
        _parse([f"--config={spec}"])


def test_tiny_rejects_an_argument():
    with pytest.raises(ConfigError, match=r"configs/tiny.py takes no argument, got '7b'"):
        load_config_file(f"{CONFIG_DIR / 'tiny.py'}:7b")


@pytest.mark.parametrize("size", sorted(TABLE2))
def test_paper_configs_carry_table2(size):
    config = load_config_file(f"{PAPER}:{size}")
    want = TABLE2[size]
    mcfg = config_base.validate(config)
    assert config.model.preset == f"llama_{size}"
    assert (mcfg.dim, mcfg.n_heads, mcfg.n_layers) == (want["dim"], want["n_heads"], want["n_layers"])
    assert mcfg.vocab_size == 32000
    assert config.optimizer.lr == want["lr"]
    assert config.train.seq_len == 2048 and config.train.batch_size == 2048
    batch_tokens = config.train.batch_size * config.train.seq_len
    assert batch_tokens == 4 * 2 ** 20  # "4M tokens"
    assert abs(config.train.steps * batch_tokens - want["tokens"]) < batch_tokens
    o = config.optimizer
    assert (o.b1, o.b2, o.weight_decay, o.clip_norm) == (0.9, 0.95, 0.1, 1.0)
    assert (o.warmup_steps, o.min_lr_ratio) == (2000, 0.1)
    assert mcfg.remat_policy == "save_linear"
    assert (mcfg.dtype, mcfg.param_dtype) == ("bfloat16", "float32")
    weights = {s["name"]: s["weight"] for s in config.data.sources}
    assert weights == TABLE1


def test_tiny_is_the_embedded_cpu_default():
    config = load_config_file(str(CONFIG_DIR / "tiny.py"))
    mcfg = config_base.validate(config)
    assert config.model.preset == "tiny" and config.data.corpus == "embedded"
    assert mcfg.vocab_size == 4096 and mcfg.dtype == "float32"
    assert config.optimizer.warmup_steps < config.train.steps // 5


def test_overrides_apply_with_types():
    tiny = str(CONFIG_DIR / "tiny.py")
    config = _parse([f"--config={tiny}", "--config.train.steps=5", "--config.model.dim=64",
                     "--config.mesh.data=2", "--config.optimizer.lr=1e-3",
                     "--config.checkpoint.async_save=false", "--config.model.remat_policy=full"])
    assert config.train.steps == 5 and config.model.dim == 64 and config.mesh.data == 2
    assert config.optimizer.lr == 1e-3 and config.checkpoint.async_save is False
    assert config_base.model_config(config.model).dim == 64


def test_wrong_type_fails_in_flag_parsing():
    tiny = str(CONFIG_DIR / "tiny.py")
    with pytest.raises(flags.IllegalFlagValueError, match="train.steps"):
        _parse([f"--config={tiny}", "--config.train.steps=abc"])
    with pytest.raises(flags.IllegalFlagValueError, match="model.dim"):
        _parse([f"--config={tiny}", "--config.model.dim=1.5"])


def test_unknown_override_names_the_key_and_suggests():
    tiny = str(CONFIG_DIR / "tiny.py")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'.*did you mean 'train.steps'"):
        check_overrides(["prog", f"--config={tiny}", "--config.train.stpes=5"])
    with pytest.raises(ConfigError, match="no 'optimiser' in the config"):
        check_overrides(["prog", f"--config={tiny}", "--config.optimiser.lr=1"])
    check_overrides(["prog", f"--config={tiny}", "--config.train.steps=5"])  # a known key passes
    with pytest.raises(AttributeError):  # config_flags itself refuses it too
        _parse([f"--config={tiny}", "--config.train.stpes=5"])


@pytest.mark.parametrize("key,value,match", [
    ("train.on_nonfinite", "ignore", "train.on_nonfinite"),
    ("train.seq_len", 4096, "max_seq_len"),
    ("train.grad_accum_steps", 3, "grad_accum_steps"),
    ("train.steps", 0, "train.steps"),
    ("optimizer.decay_mask", "biases", "decay_mask"),
    ("optimizer.min_lr_ratio", 2.0, "min_lr_ratio"),
    ("model.n_heads", 7, "n_heads"),
    ("model.preset", "llama_1b", "preset"),
    ("data.corpus", "web", "data.corpus"),
    ("mesh.rules", "embed", "mesh.rules"),
    ("mesh.rules", "nonsense=fsdp", "unknown logical axis"),
    ("mesh.tensor", 0, "mesh.tensor"),
])
def test_bad_values_fail_validation(key, value, match):
    config = load_config_file(str(CONFIG_DIR / "tiny.py"))
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=match):
        config_base.validate(config)


def test_rules_override_string_reaches_the_mesh():
    config = load_config_file(str(CONFIG_DIR / "tiny.py"))
    config.mesh.rules = "mlp=tensor+sequence, vocab="
    config_base.validate(config)
    _, rules = trainer.mesh_and_rules(config)
    assert dict(rules)["mlp"] == ("tensor", "sequence") and dict(rules)["vocab"] is None


def test_mesh_dcn_loads_and_reaches_mesh_from_config(monkeypatch):
    tiny = str(CONFIG_DIR / "tiny.py")
    config = _parse([f"--config={tiny}", "--config.mesh.dcn.fsdp=2", "--config.mesh.fsdp=4"])
    assert dict(config.mesh.dcn) == {"data": None, "fsdp": 2, "tensor": None, "sequence": None}
    config_base.validate(config)
    seen = []
    real = trainer.shd.mesh_from_config
    monkeypatch.setattr(trainer.shd, "mesh_from_config",
                        lambda cfg, *a, **k: seen.append(cfg) or real(cfg, *a, **k))
    # One host: a dcn split of 2 is refused by mesh_from_config, naming mesh.dcn.
    with pytest.raises(ConfigError, match=r"mesh: mesh.dcn .*'fsdp': 2.* but there are 1 hosts"):
        trainer.mesh_and_rules(config)
    assert seen[-1]["dcn"] == {"fsdp": 2}
    config.mesh.dcn.fsdp = 1
    mesh, _ = trainer.mesh_and_rules(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
    # All unset (the default): no dcn part, placement is automatic.
    default = load_config_file(tiny)
    trainer.mesh_and_rules(default)
    assert "dcn" not in seen[-1]
    default.mesh.dcn.data = 0
    with pytest.raises(ConfigError, match=r"mesh.dcn.data=0 must be a positive"):
        config_base.validate(default)


def _paper_data(root: Path) -> None:
    """Table 1's folders under `root`, a few JSONL documents each, and root/tokenizer.model."""
    from llama_jax.data.mixture import PAPER_MIXTURE
    from llama_jax.data.tokenizer import train_tokenizer

    texts = []
    for i, name in enumerate(PAPER_MIXTURE):
        (root / name).mkdir(parents=True)
        docs = [f"Document {j} of {name}: " + " ".join(f"word{(i * 7 + j * k) % 53}" for k in range(60))
                for j in range(12)]
        (root / name / "part-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        texts += docs
    train_tokenizer(texts, root / "tokenizer", 300, num_threads=1)


@pytest.mark.parametrize("size", sorted(TABLE2))
def test_paper_config_command_gets_past_data_setup(size, tmp_path):
    """The documented command (only --config.data.root) with the model shrunk: the
    tokenizer defaults to ROOT/tokenizer.model and every Table 1 source is found."""
    from llama_jax.train.data import setup_data

    root = tmp_path / "mixture"
    config = _parse([f"--config={PAPER}:{size}",
                     f"--config.data.root={root}", "--config.model.preset=tiny",
                     "--config.model.vocab_size=300", "--config.model.max_seq_len=64",
                     "--config.model.dtype=float32", "--config.train.seq_len=32",
                     "--config.train.batch_size=8", "--config.train.eval_batches=1",
                     "--config.data.num_workers=0"])
    mcfg = config_base.validate(config)
    with pytest.raises(ConfigError, match=r"data.tokenizer is empty and its default .*"
                                          r"mixture/tokenizer.model.* does not exist"):
        setup_data(config, mcfg)
    _paper_data(root)
    data = setup_data(config, mcfg)
    assert data.tokenizer_path == str(root / "tokenizer.model")
    assert data.source_names == list(TABLE1)
    batch = next(data.make_train_iterator())
    assert batch["inputs"].shape == (8, 32) and set(batch["source_id"]) <= set(range(7))
    assert set(data.eval_batches) == set(TABLE1)
