"""Shared pieces of the run configs in ``configs/*.py``.

Configs are loaded by path (``--config=configs/tiny.py``,
``--config=configs/llama.py:7b``), so they share code through this module:
`base_config()` holds every key with its default and, beside it, what it
means (the one place a key is documented; any key is overridable as
``--config.<section>.<key>=value``); `paper_config()` fills in the settings
common to the paper's Table 2 runs. `model_config()` turns the ``model``
section into a validated `LlamaConfig`; `validate()` checks the rest before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from llama_jax.data.mixture import paper_mixture
from llama_jax.data.sft.encode import TOO_LONG, TRAIN_ON
from llama_jax.data.sft.readers import FORMATS as SFT_FORMATS
from llama_jax.data.sft.readers import ON_ERROR
from llama_jax.distributed import ENABLED
from llama_jax.errors import ConfigError
from llama_jax.model.config import LlamaConfig, get_preset
from llama_jax.sharding import MESH_AXES, make_rules
from llama_jax.train import optim

ON_NONFINITE = ("stop", "skip")
PROGRESS = ("auto", "bar", "log")
CORPORA = ("embedded", "sources", "sft")
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
    c.model.preset = "tiny"  # a `model.config.PRESETS` name: tiny, llama_7b ... llama_65b
    # One key per `LlamaConfig` field (dim, n_layers, n_heads, n_kv_heads, vocab_size,
    # max_seq_len, dtype = compute, param_dtype = master weights, remat_policy, ...);
    # None = the preset's value.
    for field in dataclasses.fields(LlamaConfig):
        c.model[field.name] = config_dict.placeholder(_field_type(field))
    # LoRA (llama_jax/model/lora.py): rank 0 = off (full finetuning). With rank > 0 only
    # the adapters train and are checkpointed; the base comes from init.checkpoint.
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0
    c.model.lora.alpha = 16.0  # the update is scaled by alpha / rank
    c.model.lora.targets = ("wq", "wv")  # projections: wq wk wv wo w1 w2 w3

    c.init = ml_collections.ConfigDict()
    # Start from pretrained weights: any checkpoint `from_pretrained` reads (HF, Meta,
    # orbax, a training workdir). Its shape replaces model.preset (model.* shape overrides
    # must agree), its tokenizer.model is the run's unless data.tokenizer is set; used at
    # step 0 only (a resume restores the workdir's own). Empty = random init.
    c.init.checkpoint = ""

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # optimizer updates
    c.train.batch_size = 16  # global sequences per update (all devices, all microbatches)
    c.train.seq_len = 128  # tokens per sequence (<= model.max_seq_len)
    c.train.grad_accum_steps = 1  # microbatches per update (same update as one big batch)
    c.train.log_every = 10  # steps between metrics records
    c.train.eval_every = 0  # steps between held-out evals; 0 = only at the end
    c.train.eval_batches = 4  # held-out batches per source per eval
    # Benchmarks during training (the paper's Figure 2; train/task_eval.py, docs/training.md):
    # the eval CLI's --tasks, each item name[:shots][@limit], e.g. 'hellaswag,arc_easy:0@200';
    # run on the live params every eval_tasks_every steps and at the end (0 = off),
    # logged as task/<name>/<metric>.
    c.train.eval_tasks = ""
    c.train.eval_tasks_every = 0
    c.train.eval_tasks_limit = config_dict.placeholder(int)  # items without '@limit'; None = all
    c.train.eval_tasks_data_dir = ""  # one folder of data files per task, as eval's --data_dir
    c.train.eval_tasks_batch_size = 8  # rows per compiled scoring / generation batch
    c.train.seed = 0  # model init and RNG
    c.train.on_nonfinite = "stop"  # NaN/Inf loss: 'stop' (keep the last good checkpoint) | 'skip'
    c.train.max_consecutive_skips = 20  # with 'skip': stop after this many in a row
    c.train.tensorboard = True  # write TensorBoard events beside metrics.jsonl
    c.train.progress = "auto"  # 'auto' (a bar on a TTY, else log lines) | 'bar' | 'log'
    # Energy and emissions in the run's summary (the paper's Table 15; train/carbon.py):
    # energy = device-hours x device power x PUE, tCO2eq = energy x carbon intensity.
    c.train.carbon = ml_collections.ConfigDict()
    c.train.carbon.pue = 1.1  # data-centre power usage effectiveness (the paper: 1.1)
    c.train.carbon.kg_co2_per_kwh = 0.385  # carbon intensity (the paper: 0.385, US average)
    # Watts per device; None = the device's TDP from carbon.DEVICE_WATTS (CPU and
    # unlisted devices: carbon.ASSUMED_WATTS, reported as assumed).
    c.train.carbon.device_watts = config_dict.placeholder(float)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100  # steps between checkpoints (and one at the end)
    c.checkpoint.keep = 3  # newest checkpoints kept
    # Write in the background. Named ``async_save``: ``async`` is a Python keyword,
    # which config_flags cannot override.
    c.checkpoint.async_save = True
    # Check each step's file digests before resuming and fall back to the newest
    # step that verifies; False resumes from the newest step unchecked.
    c.checkpoint.verify = True

    c.mesh = ml_collections.ConfigDict()
    # Mesh axis sizes; one may be -1 (= the rest of the devices).
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.sequence = 1
    # Of each axis, how many span the slow network (hosts / TPU slices); the
    # rest of it stays inside a host. All None: automatic (hosts on `data`, or
    # on `fsdp` if `data` cannot hold them); set any to give the split yourself
    # (unset ones are then 1; their product is the number of hosts), e.g.
    # --config.mesh.dcn.fsdp=4.
    c.mesh.dcn = ml_collections.ConfigDict()
    for axis in MESH_AXES:
        c.mesh.dcn[axis] = config_dict.placeholder(int)
    # Overrides of the logical-axis rules: 'mlp=tensor+sequence,vocab=' (empty after
    # '=' = replicated; only known logical names).
    c.mesh.rules = ""

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "embedded"  # 'embedded' (built from installed packages) | 'sources'
    # With 'sources': a tuple of dicts of `SourceSpec` fields (name, kind, path, weight, ...).
    c.data.sources = ()
    c.data.root = ""  # base folder of relative source paths (and of the default tokenizer)
    # SentencePiece model; relative = under data.root; empty with 'sources' =
    # <data.root>/tokenizer.model.
    c.data.tokenizer = ""
    c.data.num_workers = 0  # grain worker processes (0 = in the training process)
    # Instruction finetuning (data.corpus='sft'; docs/finetuning.md): loss on responses only.
    c.data.sft = ml_collections.ConfigDict()
    c.data.sft.path = ""  # JSONL file; empty = the embedded instruction set (built on first use)
    c.data.sft.format = "chat"  # 'alpaca' (instruction/input/output) | 'flan' (inputs/targets)
    #                             | 'chat' (messages with system/user/assistant turns)
    # A `llama_jax.chat.template_names()` name or a tokenizer_config.json path; empty =
    # 'alpaca' for alpaca/flan data, the init checkpoint's own template (else llama2) for chat.
    c.data.sft.template = ""
    c.data.sft.train_on = "all"  # loss on 'all' assistant turns | only the 'last'
    c.data.sft.too_long = "truncate"  # examples over seq_len + 1 tokens: 'truncate' | 'drop'
    c.data.sft.on_error = "raise"  # a bad line: 'raise' (DataError naming it) | 'skip' (counted)
    c.data.sft.shuffle = True  # a fresh seeded order every epoch (data.seed)
    c.data.seed = 0  # data order

    c.optimizer = ml_collections.ConfigDict()  # AdamW, warm-up then cosine (docs/training.md)
    c.optimizer.lr = 3e-4  # peak learning rate
    c.optimizer.b1 = 0.9  # AdamW beta1
    c.optimizer.b2 = 0.95  # AdamW beta2
    c.optimizer.eps = 1e-8  # AdamW epsilon
    c.optimizer.weight_decay = 0.1  # decoupled, on the parameters decay_mask selects
    c.optimizer.warmup_steps = 2000  # linear warm-up from 0 to lr
    c.optimizer.min_lr_ratio = 0.1  # the cosine ends at lr * min_lr_ratio
    c.optimizer.clip_norm = 1.0  # global gradient-norm clipping (0 = off)
    c.optimizer.decay_mask = "matrices"  # which parameters decay: an `optim.DECAY_MASKS` name

    c.distributed = ml_collections.ConfigDict()
    # 'auto' (join a multi-process job when SLURM / a TPU pod / JAX_COORDINATOR_ADDRESS
    # says so) | 'yes' | 'no'.
    c.distributed.enabled = "auto"
    # The jax.distributed.initialize arguments; empty / None = detected.
    c.distributed.coordinator_address = ""  # host:port of process 0
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.local_device_ids = ""  # e.g. "0" for one GPU per process
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
    overrides = {k: v for k, v in model_cfg.items()
                 if k not in ("preset", "lora") and v is not None}
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
    if t.eval_tasks_every < 0:
        raise ConfigError(f"train.eval_tasks_every={t.eval_tasks_every} must be >= 0 (0 = off)")
    if t.eval_tasks_every > 0 and not t.eval_tasks.strip():
        raise ConfigError(f"train.eval_tasks_every={t.eval_tasks_every} but train.eval_tasks is "
                          "empty; list tasks, e.g. --config.train.eval_tasks=hellaswag,arc_easy")
    if t.eval_tasks_limit is not None and t.eval_tasks_limit < 1:
        raise ConfigError(f"train.eval_tasks_limit={t.eval_tasks_limit} must be >= 1 (leave it "
                          "unset for every example)")
    if t.eval_tasks_batch_size < 1:
        raise ConfigError(f"train.eval_tasks_batch_size={t.eval_tasks_batch_size} must be >= 1")
    ck = config.checkpoint
    if ck.every <= 0 or ck.keep <= 0:
        raise ConfigError(f"checkpoint.every={ck.every} and checkpoint.keep={ck.keep} "
                         "must be positive")
    if config.data.corpus not in CORPORA:
        raise ConfigError(f"data.corpus={config.data.corpus!r} is not one of {CORPORA}")
    if config.data.corpus == "sources" and not config.data.sources:
        raise ConfigError("data.corpus='sources' but data.sources is empty; list the sources "
                         "(name/kind/path/weight) in the config file or use data.corpus='embedded'")
    if config.data.sft.path and config.data.corpus != "sft":
        raise ConfigError(f"data.sft.path={config.data.sft.path!r} is set but data.corpus="
                          f"{config.data.corpus!r}; set --config.data.corpus=sft to finetune on it")
    sft = config.data.sft
    for key, allowed in (("format", SFT_FORMATS), ("train_on", TRAIN_ON), ("too_long", TOO_LONG),
                         ("on_error", ON_ERROR)):
        if sft[key] not in allowed:
            raise ConfigError(f"data.sft.{key}={sft[key]!r} is not one of {allowed}")
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
    if t.seq_len > mcfg.max_seq_len and not config.init.checkpoint:  # else its max_seq_len
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds the model's max_seq_len="
                         f"{mcfg.max_seq_len}; lower train.seq_len or set "
                         f"--config.model.max_seq_len={t.seq_len}")
    return mcfg
