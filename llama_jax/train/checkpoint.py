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
and an unfinished one is ignored on restart.

Integrity (`llama_jax.convert.integrity`): each step also carries
``digests.json`` (size and SHA-256 of every file), written from orbax's
post-finalization callback just before the rename, so a step never appears
without it. `Checkpointer.resume_step` verifies steps newest first, warns about
each that fails (naming the step and why), moves those newer than the one it
picks to ``checkpoints/rejected/`` (so the resumed run can write their step
numbers again) and raises `CheckpointError` when none verifies. The last
``checkpoint.keep`` steps are kept, and never fewer than the newest verified
step.

The layout's names and `load_params` (the parameters of a finalized step, as
`from_pretrained` reads them) live in `llama_jax.convert.workdir`; SIGTERM/SIGINT
handling in `llama_jax.distributed.PreemptionHandler`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from llama_jax.convert import integrity
from llama_jax.convert.layout import DATA, META, STATE
from llama_jax.convert.workdir import read_meta
from llama_jax.errors import CheckpointError, ConfigError
from llama_jax.model.config import LlamaConfig
from llama_jax.sharding import path_str

# Model-config fields that change parameter shapes: a checkpoint with different
# values cannot be resumed. (The stored tree's layout, scan_layers, is a run
# option recorded beside the model config, see `check_model_matches`.)
SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                "ffn_dim_multiplier", "hidden_dim", "param_dtype")
REJECTED = "rejected"  # checkpoints/rejected/<step>-<time>: steps that failed verification


@dataclasses.dataclass
class KeepLatestAndVerified:
    """orbax preservation policy: the newest `n` steps, plus the newest verified one.

    A resumed run that fell back past an unverifiable step must not let
    ``checkpoint.keep`` delete its only good step before a new one is
    finalized (and digested).
    """

    n: int
    verified: Callable[[], int | None]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        """One bool per checkpoint (oldest first): keep it."""
        keep = ocp.checkpoint_managers.LatestN(self.n).should_preserve(checkpoints,
                                                                       context=context)
        protect = self.verified()
        return [bool(k) or c.step == protect for k, c in zip(keep, checkpoints, strict=True)]


def _handler_registry(with_data: bool) -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Which handler writes and reads each item (orbax's current API; the
    ``item_handlers=`` dict is deprecated since orbax 0.12)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    if with_data:
        registry.add(DATA, grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointHandler)
        registry.add(DATA, grain.checkpoint.CheckpointRestore, grain.checkpoint.CheckpointHandler)
    return registry


class Checkpointer:
    """An orbax `CheckpointManager` over ``WORKDIR/checkpoints``.

    Args:
      directory: the checkpoints directory (see `checkpoint_dir`).
      every: save every `every` steps (`should_save`); forced saves (end of
        run, preemption) ignore it.
      keep: keep the last `keep` finalized checkpoints (and the newest
        verified one, see `KeepLatestAndVerified`).
      async_save: write in a background thread (otherwise `save` waits).
      with_data: whether checkpoints carry a data-iterator item.

    Attributes:
      verified_step: the newest step known good: the one `resume_step`
        picked, or the last one this checkpointer saved (and digested).
    """

    def __init__(self, directory: str | Path, *, every: int = 1, keep: int = 3,
                 async_save: bool = True, with_data: bool = True):
        self.directory = Path(directory)
        self.every = every
        self.with_data = with_data
        self.async_save = async_save
        self.verified_step: int | None = None
        self._in_flight: int | None = None  # the step being written
        self._undigested: int | None = None  # finalized without a temp dir to digest in
        self._failure: Exception | None = None  # a save that could not be written
        # Always orbax's async checkpointer: its post-finalization callback writes
        # the digests (a synchronous save waits at once, see `save`).
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, create=True,
            preservation_policy=KeepLatestAndVerified(keep, lambda: self.verified_step),
            enable_async_checkpointing=True, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._finalized))
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options,
                                             handler_registry=_handler_registry(with_data))

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
        # "digests" tells a step whose digests.json went missing from a legacy one.
        meta = dict(meta, step=int(step), digests=integrity.DIGESTS)
        items = {
            STATE: ocp.args.StandardSave({"train_state": state, "rng": key_data}),
            META: ocp.args.JsonSave(_jsonable(meta)),
        }
        if self.with_data:
            if data_iterator is None:
                raise ValueError("this Checkpointer saves a data item; pass data_iterator")
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        self.wait()  # One save at a time: the callback digests `_in_flight`.
        self._in_flight = int(step)
        started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if not started:
            self._in_flight = None
        elif not self.async_save:
            self.wait()
        return started

    def _finalized(self) -> None:
        """orbax's post-finalization callback (its finalize thread, every
        process): every item of `_in_flight` is written, the temporary
        directory not yet renamed. Process 0 digests it there."""
        step, self._in_flight = self._in_flight, None
        if step is None:
            return
        if jax.process_index() == 0:
            tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"),
                         key=lambda p: p.stat().st_mtime)
            if tmp:
                integrity.write_digests(tmp[-1])
            else:  # No temporary directory (e.g. an object store): digest after the commit.
                self._undigested = step
        self.verified_step = step

    def resume_step(self, *, verify: bool = True) -> int | None:
        """The newest step that verifies (None without checkpoints).

        Steps are checked newest first (`integrity.verify_step`). Each that
        fails is logged as a warning with its reason; those newer than the
        step picked are moved to ``checkpoints/rejected/`` so this run can
        write their step numbers again. Steps written before digests existed
        are accepted with a warning. With `verify=False` the newest step is
        taken unchecked.

        Raises:
          CheckpointError: steps exist but none verifies.
        """
        steps = self.all_steps()
        if not steps:
            return None
        if not verify:
            logging.warning("checkpoint.verify=False: resuming from step %d in %s without "
                            "checking its digests", steps[-1], self.directory)
            self.verified_step = steps[-1]
            return steps[-1]
        chosen, failures = None, []
        if jax.process_index() == 0:
            chosen, failures = self._newest_verified(steps)
            if chosen is not None:
                self._set_aside([s for s, _ in failures])
        if jax.process_count() > 1:  # Process 0 decides; everyone follows.
            code = multihost_utils.broadcast_one_to_all(np.int64(-1 if chosen is None else chosen))
            chosen = None if int(code) < 0 else int(code)
            multihost_utils.sync_global_devices("llama_jax:resume_step")
        self.manager.reload()
        if chosen is None:
            why = "; ".join(f"step {s}: {r}" for s, r in failures) or "see process 0's log"
            raise CheckpointError(
                f"no checkpoint in {self.directory} passes verification ({why}). Start a "
                "fresh --workdir, or set --config.checkpoint.verify=False to resume from the "
                "newest step unchecked (at your own risk).")
        self.verified_step = chosen
        return chosen

    def _newest_verified(self, steps: list[int]) -> tuple[int | None, list[tuple[int, str]]]:
        """(newest verifying step or None, [(step, reason)] of the newer ones that failed)."""
        failures = []
        for step in reversed(steps):
            verdict = integrity.verify_step(self.directory / str(step), with_data=self.with_data)
            if verdict.ok:
                if verdict.legacy:
                    logging.warning("checkpoint step %d in %s has no %s (written before digests "
                                    "were recorded): resuming from it unverified", step,
                                    self.directory, integrity.DIGESTS)
                if failures:
                    logging.warning("checkpoint: falling back to step %d, the newest that "
                                    "verifies", step)
                return step, failures
            logging.warning("checkpoint step %d in %s failed verification: %s", step,
                            self.directory, verdict.reason)
            failures.append((step, verdict.reason))
        return None, failures

    def _set_aside(self, steps: list[int]) -> None:
        """Move `steps` to ``checkpoints/rejected/<step>-<time>`` (kept for inspection)."""
        if not steps:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        (self.directory / REJECTED).mkdir(exist_ok=True)
        for step in steps:
            dst = self.directory / REJECTED / f"{step}-{stamp}"
            (self.directory / str(step)).rename(dst)
            logging.warning("checkpoint: moved the unverified step %d to %s", step, dst)

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
        try:
            saved = self.manager.item_metadata(step)[STATE]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(
                f"could not read the array metadata of checkpoint step {step} in "
                f"{self.directory}: {e}\nIts files are damaged; move the step out of the way "
                "to resume from an older one, or use a fresh --workdir.") from e
        diffs = _shape_diffs(getattr(saved, "tree", saved), target)
        if diffs:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds arrays of other shapes than "
                "this run's train state:\n  " + "\n  ".join(diffs[:8])
                + "\nUse the config that wrote it, or a fresh --workdir.")
        items = {STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
        if self.with_data and data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(
                f"could not restore checkpoint step {step} from {self.directory}: {e}\n"
                "The saved train state or data position does not match this run (model "
                "shape, optimizer, data sources or process count changed?), or its files are "
                "damaged. Use the original config, a fresh --workdir, or move the step out of "
                "the way to resume from an older one."
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
        """Block until pending asynchronous saves are finalized (and digested).

        Raises `CheckpointError` (once) when a save could not be written, e.g.
        a full disk: the message names the step, the cause and the newest
        finalized step, which is kept (orbax never renames a torn step into place).
        """
        if self._failure is not None:
            return  # Reported once; the manager has nothing left to finish.
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax raises what its writers raised
            self._failure = e
            step, self._in_flight = self._in_flight, None
            raise CheckpointError(write_failure_message(step, self.directory, e,
                                                        self.latest_step())) from e
        step, self._undigested = self._undigested, None
        if step is not None and (self.directory / str(step)).is_dir():
            integrity.write_digests(self.directory / str(step))

    def close(self) -> None:
        """Wait for pending saves, then release orbax's threads (also after a failed save)."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - a failed save was already reported by wait()
                if self._failure is None:
                    raise


def write_failure_message(step: int | None, directory: Path, error: BaseException,
                          latest: int | None) -> str:
    """One line for a checkpoint save that failed: the step, the cause, what is kept."""
    text = str(error)
    if "No space left on device" in text or "os_error_code='28'" in text or \
            getattr(error, "errno", None) == 28:
        cause = "the disk is full (no space left on device)"
        fix = "free space there, or use a --workdir on a larger disk,"
    else:
        cause = f"the write failed ({text.splitlines()[0][:300] if text else type(error).__name__})"
        fix = "fix the cause,"
    what = f"step {step}" if step is not None else "a checkpoint"
    kept = f"step {latest}" if latest is not None else "none"
    return (f"could not save {what} to {directory}: {cause}. The last finalized checkpoint "
            f"({kept}) is kept; {fix} then run the same command again to resume from it.")


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


def check_model_matches(saved: dict, requested: LlamaConfig, workdir: str | Path, *,
                        saved_scan_layers: bool | None = None) -> None:
    """Raise if the saved model config's shape differs from `requested`.

    Names each differing field with both values and suggests a fresh workdir.
    Run options (dtype, remat policy, attention impl) may differ. The train
    state's tree follows `scan_layers`, so resuming needs the layout it was
    saved in: `saved_scan_layers` (the meta's record; checkpoints written
    before the split carry it inside `saved`) is compared too.
    """
    want = requested.to_dict()
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config asks for {want[k]!r}"
             for k in SHAPE_FIELDS if saved.get(k) != want[k]]
    if saved_scan_layers is None:
        saved_scan_layers = saved.get("scan_layers")
    if saved_scan_layers is not None and saved_scan_layers != requested.scan_layers:
        diffs.append(f"scan_layers: checkpoint has {saved_scan_layers!r}, config asks for "
                     f"{requested.scan_layers!r} (set model.scan_layers={saved_scan_layers} "
                     "to resume)")
    if diffs:
        raise ConfigError(
            f"workdir {workdir} holds a checkpoint of a different model:\n  " + "\n  ".join(diffs)
            + "\nUse a fresh --workdir for this model, or the config that wrote the checkpoint.")


