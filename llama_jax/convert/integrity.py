"""Per-file digests of a checkpoint step, written last and verified on restore.

orbax makes a save atomic (a step directory appears only once every item is
written) but never checks what it reads back: one flipped byte in an OCDBT
data file restores as a wrong number. So every step also carries
``<step>/digests.json``: the size and SHA-256 of each file the save wrote.

Why a file of its own rather than a field of the ``meta`` item: the meta is
written by orbax *during* the save, before the array files are complete, so it
cannot hold their digests. `Checkpointer` writes ``digests.json`` from orbax's
post-finalization callback, inside the step's temporary directory just before
orbax renames it to ``<step>``: a finalized step is never visible without its
digests, and a kill at any moment leaves either no step or a digested one.
The meta records ``"digests": "digests.json"``, so a step whose digests file
went missing is told apart from one written before digests existed (a legacy
step: accepted with a warning, after a structural check).

`verify_step` returns why a step cannot be trusted, or None.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from llama_jax.convert.layout import DATA, META, STATE
from llama_jax.fileio import atomic_write

DIGESTS = "digests.json"
ALGORITHM = "sha256"
# orbax's own step bookkeeping, rewritten after the post-finalization callback
# (commit timestamp, commit marker): not part of what the save wrote.
UNDIGESTED = frozenset({DIGESTS, "_CHECKPOINT_METADATA", "commit_success.txt"})
META_FILE = f"{META}/metadata"
MANIFEST = f"{STATE}/manifest.ocdbt"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_files(step_dir: str | Path) -> list[str]:
    """The files of a step directory (relative POSIX paths, sorted), less `UNDIGESTED`."""
    step_dir = Path(step_dir)
    out = []
    for dirpath, _, names in os.walk(step_dir):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(step_dir).as_posix()
            if rel not in UNDIGESTED:
                out.append(rel)
    return sorted(out)


def compute_digests(step_dir: str | Path) -> dict:
    """``{"algorithm", "files": {relpath: {"size", "sha256"}}}`` of every file in `step_dir`."""
    step_dir = Path(step_dir)
    files = {rel: {"size": (step_dir / rel).stat().st_size, ALGORITHM: file_sha256(step_dir / rel)}
             for rel in step_files(step_dir)}
    return {"algorithm": ALGORITHM, "files": files}


def write_digests(step_dir: str | Path) -> None:
    """Write `step_dir`/digests.json atomically (temp file + rename)."""
    record = compute_digests(step_dir)
    atomic_write(str(Path(step_dir) / DIGESTS), json.dumps(record, indent=1).encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of `verify_step`: `reason` is None for a step that can be used."""

    reason: str | None
    legacy: bool = False  # written before digests existed: checked for structure only

    @property
    def ok(self) -> bool:
        return self.reason is None


def _structure(step_dir: Path, with_data: bool) -> str | None:
    """Why a step lacks an item orbax needs to restore it, or None."""
    if not (step_dir / MANIFEST).is_file():
        return f"{MANIFEST} is missing"
    if with_data and not any(p.is_file() for p in (step_dir / DATA).glob("*")):
        return f"the data-iterator state ({DATA}/) is missing"
    return None


def verify_step(step_dir: str | Path, *, with_data: bool = True) -> Verdict:
    """Check a finalized step against its recorded digests.

    Args:
      step_dir: ``WORKDIR/checkpoints/<step>``.
      with_data: whether the step must carry a data-iterator state.

    Returns:
      A `Verdict`; its `reason` names the first problem found (missing or
      garbage meta, missing digests, a missing, truncated or altered file,
      a missing ``manifest.ocdbt`` or data-iterator state).
    """
    step_dir = Path(step_dir)
    meta_path = step_dir / META_FILE
    if not meta_path.is_file():
        return Verdict(f"its meta ({META_FILE}) is missing")
    try:
        meta = json.loads(meta_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        return Verdict(f"its meta ({META_FILE}) is not valid JSON ({e})")
    if not isinstance(meta, dict):
        return Verdict(f"its meta ({META_FILE}) is not a JSON object")
    digests_path = step_dir / DIGESTS
    if not digests_path.is_file():
        if meta.get("digests") is None:  # Written before digests existed.
            return Verdict(_structure(step_dir, with_data), legacy=True)
        return Verdict(f"its {DIGESTS} is missing")
    try:
        record = json.loads(digests_path.read_bytes())
        files = record["files"]
        expected = {rel: (int(d["size"]), str(d[ALGORITHM])) for rel, d in files.items()}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        return Verdict(f"its {DIGESTS} is unreadable ({type(e).__name__}: {e})")
    reason = _structure(step_dir, with_data)
    if reason is not None:
        return Verdict(reason)
    for rel, (size, digest) in sorted(expected.items()):
        path = step_dir / rel
        if not path.is_file():
            return Verdict(f"{rel} is missing")
        actual = path.stat().st_size
        if actual != size:
            return Verdict(f"{rel} has {actual} bytes, {size} were written (truncated?)"
                           if actual < size else f"{rel} has {actual} bytes, {size} were written")
        if file_sha256(path) != digest:
            return Verdict(f"{rel} does not match its {ALGORITHM} digest (corrupted)")
    return Verdict(None)
