"""Shared pieces of the run configs in ``configs/*.py``.

Configs are loaded by path (``--config=configs/tiny.py``), so they share code
through this module: `base_config()` holds every key with its default, and
`paper_config()` fills in the settings common to the paper's Table 2 runs.
`model_config()` turns the ``model`` section into a validated `LlamaConfig`;
`validate()` checks the rest before anything is compiled.

Keys (all overridable as ``--config.<section>.<key>=value``):

- ``model.preset`` and one key per `LlamaConfig` field (None = the preset's).
- ``train.steps``, ``train.batch_size`` (global sequences per optimizer step),
  ``train.seq_len``, ``train.grad_accum_steps``, ``train.log_every``,
  ``train.eval_every``, ``train.eval_batches``, ``train.seed``,
  ``train.on_nonfinite`` ('stop' | 'skip'), ``train.max_consecutive_skips``,
  ``train.tensorboard``, ``train.progress`` ('auto' | 'bar' | 'log').
- ``checkpoint.every``, ``checkpoint.keep``, ``checkpoint.async_save``.
- ``mesh.data`` / ``.fsdp`` / ``.tensor`` / ``.sequence`` (-1 = the rest),
  ``mesh.dcn.<axis>`` (how many of that axis span hosts / slices; all None =
  automatic: the hosts go on ``data``, else ``fsdp``), ``mesh.rules``
  (overrides of the logical-axis rules, 'name=axis+axis,...').
- ``data.corpus`` ('embedded' | 'sources'), ``data.sources`` (tuple of dicts
  name/kind/path/weight/...), ``data.root``, ``data.tokenizer`` (empty with
  'sources': ``<data.root>/tokenizer.model``), ``data.num_workers``,
  ``data.seed``.
- ``optimizer.lr``, ``.b1``, ``.b2``, ``.eps``, ``.weight_decay``,
  ``.warmup_steps``, ``.min_lr_ratio``, ``.clip_norm``, ``.decay_mask``.
- ``distributed.enabled`` ('auto' | 'yes' | 'no'), ``.coordinator_address``,
  ``.num_processes``, ``.process_id``, ``.local_device_ids``.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from llama_jax.data.mixture import paper_mixture
from llama_jax.distributed import ENABLED
from llama_jax.errors import ConfigError
from llama_jax.model.config import LlamaConfig, get_preset
from llama_jax.sharding import MESH_AXES, make_rules
from llama_jax.train import optim

ON_NONFINITE = ("stop", "skip")
PROGRESS = ("auto", "bar", "log")
CORPORA = ("embedded", "sources")
DEFAULT_TOKENIZER = "tokenizer.model"  # under data.root when data.tokenizer is empty

# The paper's batch: 4M tokens = 2048 sequences x 2048 tokens (Table 2).
PAPER_SEQ_LEN = 2048
PAPER_BATCH_SEQUENCES = 2048
PAPER_BATCH_TOKENS = PAPER_SEQ_LEN * PAPER_BATCH_SEQUENCES


def _field_type(field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(LlamaConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default (the `tiny` model on the embedded corpus)."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"
    for field in dataclasses.fields(LlamaConfig):
        c.model[field.name] = config_dict.placeholder(_field_type(field))

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 16
    c.train.seq_len = 128
    c.train.grad_accum_steps = 1
    c.train.log_every = 10
    c.train.eval_every = 0  # 0 = only at the end.
    c.train.eval_batches = 4
    c.train.seed = 0
    c.train.on_nonfinite = "stop"
    c.train.max_consecutive_skips = 20
    c.train.tensorboard = True
    c.train.progress = "auto"

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100
    c.checkpoint.keep = 3
    # ``async`` is a Python keyword, which config_flags cannot override.
    c.checkpoint.async_save = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.sequence = 1
    # Of each axis, how many span the slow network (hosts / TPU slices); the
    # rest of it stays inside a host. All None: automatic (hosts on `data`, or
    # on `fsdp` if `data` cannot hold them); set any to give the split yourself
    # (unset ones are then 1), e.g. --config.mesh.dcn.fsdp=4.
    c.mesh.dcn = ml_collections.ConfigDict()
    for axis in MESH_AXES:
        c.mesh.dcn[axis] = config_dict.placeholder(int)
    c.mesh.rules = ""

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "embedded"
    c.data.sources = ()
    c.data.root = ""
    c.data.tokenizer = ""  # with corpus='sources': empty = <data.root>/tokenizer.model
    c.data.num_workers = 0
    c.data.seed = 0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 3e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 2000
    c.optimizer.min_lr_ratio = 0.1
    c.optimizer.clip_norm = 1.0
    c.optimizer.decay_mask = "matrices"

    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = "auto"
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.local_device_ids = ""  # e.g. "0" for one GPU per process.
    return c


def paper_config(preset: str, *, lr: float, train_tokens: float) -> ml_collections.ConfigDict:
    """A Table 2 run: `preset`'s shape, peak `lr`, `train_tokens` tokens.

    ``configs/llama.py:SIZE`` calls it with Table 2's values per size
    (``--config=configs/llama.py:7b``, ``:13b``, ``:33b``, ``:65b``).

    4M-token batches of 2048 x 2048, steps = tokens / 4M (rounded up),
    2,000 warm-up steps, cosine to 10%, AdamW(0.9, 0.95), wd 0.1, clip 1.0,
    bf16 compute with f32 master weights, remat that saves linear outputs,
    the paper's mixture (Table 1) from ``data.root`` (one JSONL folder per
    source, ``ROOT/commoncrawl``, ``ROOT/c4``, ...; the SentencePiece model
    at ``ROOT/tokenizer.model`` unless ``data.tokenizer`` names another).
    """
    c = base_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "save_linear"
    c.train.seq_len = PAPER_SEQ_LEN
    c.train.batch_size = PAPER_BATCH_SEQUENCES
    c.train.steps = -(-int(train_tokens) // PAPER_BATCH_TOKENS)
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.data.corpus = "sources"
    c.data.sources = _paper_sources()
    c.data.num_workers = 8
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = 2000
    c.optimizer.min_lr_ratio = 0.1
    return c


def _paper_sources() -> tuple:
    """Table 1's mixture (`mixture.paper_mixture`) as config dicts: JSONL folders
    named after each source under ``data.root`` (``ROOT/github/*.jsonl``)."""
    return tuple({"name": s.name, "kind": s.kind, "path": s.path, "weight": float(s.weight)}
                 for s in paper_mixture())


def model_config(model_cfg: ml_collections.ConfigDict) -> LlamaConfig:
    """The `LlamaConfig` of the ``model`` section: preset plus non-None fields."""
    overrides = {k: v for k, v in model_cfg.items() if k != "preset" and v is not None}
    try:
        return get_preset(model_cfg.preset, **overrides)
    except ValueError as e:
        raise ConfigError(f"model: {e} (set via model.preset / model.<field>)") from e


def validate(config: ml_collections.ConfigDict) -> LlamaConfig:
    """Check the config's values (types are checked by config_flags).

    Returns the model config. Raises ConfigError naming the key and the fix.
    """
    t = config.train
    for key in ("steps", "batch_size", "seq_len", "grad_accum_steps", "log_every"):
        if t[key] <= 0:
            raise ConfigError(f"train.{key}={t[key]} must be positive")
    if t.batch_size % t.grad_accum_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                         f"train.grad_accum_steps={t.grad_accum_steps}")
    if t.on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"train.on_nonfinite={t.on_nonfinite!r} is not one of {ON_NONFINITE}")
    if t.progress not in PROGRESS:
        raise ConfigError(f"train.progress={t.progress!r} is not one of {PROGRESS}")
    if t.eval_every < 0 or t.eval_batches < 0:
        raise ConfigError("train.eval_every and train.eval_batches must be >= 0")
    ck = config.checkpoint
    if ck.every <= 0 or ck.keep <= 0:
        raise ConfigError(f"checkpoint.every={ck.every} and checkpoint.keep={ck.keep} "
                         "must be positive")
    if config.data.corpus not in CORPORA:
        raise ConfigError(f"data.corpus={config.data.corpus!r} is not one of {CORPORA}")
    if config.data.corpus == "sources" and not config.data.sources:
        raise ConfigError("data.corpus='sources' but data.sources is empty; list the sources "
                         "(name/kind/path/weight) in the config file or use data.corpus='embedded'")
    if config.distributed.enabled not in ENABLED:
        raise ConfigError(f"distributed.enabled={config.distributed.enabled!r} is not one "
                          f"of {ENABLED}")
    if config.optimizer.decay_mask not in optim.DECAY_MASKS:
        raise ConfigError(f"optimizer.decay_mask={config.optimizer.decay_mask!r} is not one "
                          f"of {optim.DECAY_MASKS}")
    try:
        optim.optimizer_from_config(config.optimizer, t.steps)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    try:
        make_rules(config.mesh.rules)
    except ValueError as e:
        raise ConfigError(f"mesh.rules={config.mesh.rules!r}: {e}") from e
    for axis in MESH_AXES:
        if config.mesh[axis] == 0 or config.mesh[axis] < -1:
            raise ConfigError(f"mesh.{axis}={config.mesh[axis]} must be positive or -1 (the rest)")
        dcn = config.mesh.dcn[axis]
        if dcn is not None and dcn < 1:
            raise ConfigError(f"mesh.dcn.{axis}={dcn} must be a positive number of hosts/slices "
                              "(or unset for automatic placement)")
    mcfg = model_config(config.model)
    if t.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds the model's max_seq_len="
                         f"{mcfg.max_seq_len}; lower train.seq_len or set "
                         f"--config.model.max_seq_len={t.seq_len}")
    return mcfg
