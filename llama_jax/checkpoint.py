"""Training checkpoints with orbax: train state, data iterator, RNG, config.

Layout of a workdir::

    WORKDIR/checkpoints/<step>/state   train state + RNG (orbax, sharded arrays)
                              /data    the grain iterator's state (one JSON per process)
                              /meta    JSON: config, model config, counters

Saves are asynchronous (``checkpoint.async_save``): arrays are copied off the
devices, then written by a background thread while training goes on. orbax
writes each step into ``<step>.orbax-checkpoint-tmp*`` and renames it to
``<step>`` only once every item is complete (``commit_success.txt`` marks it on
object stores), so a kill at any moment leaves every finalized step readable
and an unfinished one is ignored on restart. The last ``checkpoint.keep``
steps are kept.

`PreemptionHandler` turns SIGTERM/SIGINT into a flag the training loop reads
at a step boundary, so a preempted run saves and exits with status 0.
`load_params` reads (LlamaConfig, params) from a workdir or a step directory.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from llama_jax.model.config import LlamaConfig
from llama_jax.sharding import path_str

STATE, DATA, META = "state", "data", "meta"
CHECKPOINT_DIR = "checkpoints"

# Model-config fields that change parameter shapes or layout: a checkpoint
# with different values cannot be resumed.
SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                "ffn_dim_multiplier", "hidden_dim", "scan_layers", "param_dtype")


def _grain_handler():
    import grain

    return grain.checkpoint.CheckpointHandler()


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a training workdir keeps its checkpoints."""
    return Path(workdir) / CHECKPOINT_DIR


class Checkpointer:
    """An orbax `CheckpointManager` over ``WORKDIR/checkpoints``.

    Args:
      directory: the checkpoints directory (see `checkpoint_dir`).
      every: save every `every` steps (`should_save`); forced saves (end of
        run, preemption) ignore it.
      keep: keep the last `keep` finalized checkpoints.
      async_save: write in a background thread.
      with_data: whether checkpoints carry a data-iterator item.
    """

    def __init__(self, directory: str | Path, *, every: int = 1, keep: int = 3,
                 async_save: bool = True, with_data: bool = True):
        self.directory = Path(directory)
        self.every = every
        self.with_data = with_data
        handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
        if with_data:
            handlers[DATA] = _grain_handler()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options,
                                             item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The newest finalized step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `step` is a multiple of `every` (orbax's own rule would also
        save the first step of a run with no checkpoint yet)."""
        return step > 0 and step % self.every == 0

    def save(self, step: int, state: Any, *, rng: jax.Array, meta: dict,
             data_iterator: Any = None, force: bool = False) -> bool:
        """Start saving `state`, the RNG key, `meta` and the iterator's state.

        Returns whether a save was started (orbax skips a step it already holds
        and, unless `force`, steps that are not due). The call returns once the arrays are copied off the
        devices; `wait` blocks until the files are finalized.
        """
        key_data = np.asarray(jax.random.key_data(rng))
        key_data = jax.make_array_from_callback(key_data.shape, _everywhere(),
                                                lambda index: key_data[index])
        items = {
            STATE: ocp.args.StandardSave({"train_state": state, "rng": key_data}),
            META: ocp.args.JsonSave(_jsonable(dict(meta, step=int(step)))),
        }
        if self.with_data:
            if data_iterator is None:
                raise ValueError("this Checkpointer saves a data item; pass data_iterator")
            import grain

            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, *, abstract_rng: jax.Array,
                data_iterator: Any = None) -> tuple[Any, jax.Array, dict]:
        """Restore step `step` onto `abstract_state`'s shardings.

        Args:
          step: a finalized step.
          abstract_state: a pytree of `jax.ShapeDtypeStruct` with `sharding`
            set -- the *target* layout, which may differ from the saved one
            (a different mesh shape).
          abstract_rng: a key like the saved one (its shape is used).
          data_iterator: the freshly built iterator; its state is set in place.

        Returns:
          (state, rng key, meta dict).
        """
        key_data = jax.random.key_data(abstract_rng)
        target = {"train_state": abstract_state,
                  "rng": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype,
                                              sharding=_everywhere())}
        saved = self.manager.item_metadata(step)[STATE]
        diffs = _shape_diffs(getattr(saved, "tree", saved), target)
        if diffs:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} holds arrays of other shapes than "
                "this run's train state:\n  " + "\n  ".join(diffs[:8])
                + "\nUse the config that wrote it, or a fresh --workdir.")
        items = {STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
        if self.with_data and data_iterator is not None:
            import grain

            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"could not restore checkpoint step {step} from {self.directory}: {e}\n"
                "The saved train state or data position does not match this run (model "
                "shape, optimizer, data sources or process count changed?). Use the original "
                "config or a fresh --workdir."
            ) from e
        restored = out[STATE]
        rng = jax.random.wrap_key_data(np.asarray(restored["rng"]))
        return restored["train_state"], rng, dict(out[META])

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON meta of `step` (default: latest), or None without checkpoints."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return read_meta(self.directory / str(step))

    def wait(self) -> None:
        """Block until pending asynchronous saves are finalized."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _everywhere() -> jax.sharding.NamedSharding:
    """Replicated on every device of every process: how the (identical on all
    processes) RNG key is saved, since a multi-process save takes only global
    arrays."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _shape_diffs(saved_tree: Any, target: Any) -> list[str]:
    """'path: saved shape vs wanted shape' for arrays present in both trees."""
    saved = {path_str(p): tuple(leaf.shape)
             for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
             if hasattr(leaf, "shape")}
    wanted = {path_str(p): tuple(leaf.shape)
              for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
    return [f"{k}: checkpoint {saved[k]}, this run {wanted[k]}"
            for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]


def _jsonable(x: Any) -> Any:
    """JSON round-trip with numpy scalars and tuples turned into plain types."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(x, default=default))


def read_meta(step_dir: str | Path) -> dict:
    """The meta JSON of a finalized step directory."""
    path = Path(step_dir) / META / "metadata"
    if not path.exists():
        raise FileNotFoundError(f"{step_dir} is not a llama_jax checkpoint step "
                                f"(no {META}/metadata); pass a training workdir or a step dir")
    return json.loads(path.read_text())


def check_model_matches(saved: dict, requested: LlamaConfig, workdir: str | Path) -> None:
    """Raise if the saved model config's shape differs from `requested`.

    Names each differing field with both values and suggests a fresh workdir.
    Non-shape differences (dtype, remat policy, attention impl) are allowed.
    """
    want = requested.to_dict()
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config asks for {want[k]!r}"
             for k in SHAPE_FIELDS if saved.get(k) != want[k]]
    if diffs:
        from llama_jax.config_base import ConfigError

        raise ConfigError(
            f"workdir {workdir} holds a checkpoint of a different model:\n  " + "\n  ".join(diffs)
            + "\nUse a fresh --workdir for this model, or the config that wrote the checkpoint.")


class PreemptionHandler:
    """SIGTERM/SIGINT -> a flag the loop checks at step boundaries.

    The first signal sets `requested`; the loop saves a checkpoint and returns
    (exit status 0). A second SIGINT raises KeyboardInterrupt at once.

    With several processes, JAX's preemption service (started by
    ``jax.distributed.initialize``) catches SIGTERM itself and agrees on a
    common step with the other hosts (`reached` asks it), so no Python handler
    is installed there; without that service the local flag is used.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _jax_service() -> bool:
        """Whether JAX's preemption service runs: several processes joined by
        `jax.distributed.initialize` with ``jax_enable_preemption_service`` on
        (public API only, so it holds across JAX versions)."""
        return (jax.process_count() > 1 and jax.distributed.is_initialized()
                and bool(getattr(jax.config, "jax_enable_preemption_service", True)))

    def install(self) -> PreemptionHandler:
        if self._jax_service():
            return self
        if threading.current_thread() is not threading.main_thread():
            logging.warning("not in the main thread: SIGTERM/SIGINT handlers not installed")
            return self
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def reached(self, step: int) -> bool:
        """Whether to save-and-stop after `step` (all processes agree)."""
        if self._jax_service():
            from jax.experimental import multihost_utils

            try:
                reached = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # No sync manager after all: the local flag decides.
                return self.requested
            if reached:
                self.signal_name = self.signal_name or "SIGTERM"
            return reached
        return self.requested

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def _find_step_dir(path: Path) -> Path:
    if (path / META / "metadata").exists():
        return path
    ckpt = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a training workdir, its "
                                "checkpoints/ directory or a step directory")
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()
                   and (p / META / "metadata").exists())
    if not steps:
        raise FileNotFoundError(f"no finalized checkpoint under {ckpt}")
    return ckpt / str(steps[-1])


def load_params(path: str | Path, *, shardings: Any = None) -> tuple[LlamaConfig, Any]:
    """(LlamaConfig, params) from a training workdir, its checkpoints dir or a step dir.

    Only the parameters are read (not the optimizer state). A workdir gives
    its newest finalized step.

    Args:
      path: ``WORKDIR``, ``WORKDIR/checkpoints`` or ``WORKDIR/checkpoints/<step>``.
      shardings: optional pytree of `jax.sharding.Sharding` like the params to
        place them sharded; by default each array lands on the first device.
    """
    step_dir = _find_step_dir(Path(path))
    meta = read_meta(step_dir)
    config = LlamaConfig.from_dict(meta["model_config"])
    state_dir = (step_dir / STATE).absolute()
    from etils import epath

    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    checkpointer = ocp.PyTreeCheckpointer()
    saved = tree["train_state"]["params"]
    if shardings is None:
        device = jax.devices()[0]
        shardings = jax.tree_util.tree_map(
            lambda m: jax.sharding.SingleDeviceSharding(device), saved)
    restore_args = jax.tree_util.tree_map(
        lambda m, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=tuple(m.shape), dtype=m.dtype),
        saved, shardings)
    out = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"train_state": {"params": saved}},
        restore_args={"train_state": {"params": restore_args}},
        partial_restore=True))
    return config, out["train_state"]["params"]
