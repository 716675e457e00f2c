"""Stage ``perplexity``: cc_net's n-gram LM quality filter, with head / middle / tail buckets.

As cc_net's ``DocLM`` + ``PerplexityBucket``: each line of a page is
normalised, tokenised and scored by the n-gram LM (log10, with ``<s>`` and
``</s>``); the page's perplexity is ``10 ** (-sum(log10 p) / sum(tokens + 1))``
(rounded to 0.1 as cc_net does). With cut-offs ``head`` < ``tail``, a page is
``head`` if perplexity < head, ``middle`` if < tail, else ``tail``; a page the
model cannot score (no words, or another language than the model's) is
``all``. `keep_buckets` chooses what stays; the rest is dropped with reason
``perplexity_<bucket>``. ``doc.metadata`` gets ``perplexity`` and ``bucket``;
the step's datatrove stats count ``bucket_<bucket>`` and summarise ``perplexity``.

Cut-offs, in order of precedence:

* ``cutoffs``: a cc_net-style ``cutoff.csv`` (row index = percentile 0..99,
  one column of perplexities per language) read at rows ``percentile_head``
  and ``percentile_tail`` of column ``language``;
* ``head_cutoff`` and ``tail_cutoff``: the perplexities themselves;
* neither: computed on this run's documents. An index pass scores a
  deterministic sample of them (a page is in it when the SHA-1 of its text
  falls below ``sample_rate``, so the sample does not depend on how the
  documents are sharded), a second one-task pass takes the percentiles
  (numpy's linear interpolation over the sorted union, independent of the
  order of the shards) into ``<work_dir>/cutoffs.json``, which the filter reads.

cc_net's code buckets at the 30th and 60th percentiles (``PerplexityBucket``'s
defaults, used by ``mine.py``); we use the same.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import ml_collections
import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError, DataError
from llama_jax.fileio import atomic_write
from llama_jax.prepare.arpa import LineTokenizer, check_model_file, load_language_model
from llama_jax.prepare.stage import IndexPass, Stage, StageEnv

BUCKETS = ("head", "middle", "tail", "all")
FLAG = "--config.perplexity"


def default_config() -> ml_collections.ConfigDict:
    """The stage's options (cc_net's defaults; see the module docstring)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.model = ""  # .arpa (ours or cc_net's), or KenLM .bin with kenlm installed
    c.sp_model = ""  # the SentencePiece model the LM was trained on ("" = whitespace tokens)
    c.normalize = True  # cc_net's text normalisation before tokenising
    c.language = "en"  # the model's language; pages with another metadata["language"] are bucket "all"
    c.use_kenlm = True  # score through kenlm.Model when the binding is installed
    c.keep_buckets = ("head", "middle")
    c.cutoffs = ""  # a cc_net cutoff.csv
    c.percentile_head = 30
    c.percentile_tail = 60
    c.head_cutoff = -1.0
    c.tail_cutoff = -1.0
    c.sample_rate = 1.0  # share of pages scored to compute the cut-offs
    return c


def bucket_of(perplexity: float | None, head: float, tail: float) -> str:
    """cc_net's ``PerplexityBucket.get_bucket``: head below `head`, middle below `tail`, else tail."""
    if perplexity is None or perplexity < 0:
        return "all"
    if perplexity < head:
        return "head"
    if perplexity < tail:
        return "middle"
    return "tail"


def read_cutoff_csv(path: str, language: str, percentile_head: int, percentile_tail: int) -> tuple[float, float]:
    """The (head, tail) perplexities of `language` at the two percentile rows of a cc_net ``cutoff.csv``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{FLAG}.cutoffs={path!r}: no such file; pass a cc_net cutoff.csv, or set "
                          f"{FLAG}.head_cutoff/tail_cutoff, or leave both unset to compute them")
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
    header = [h.strip() for h in rows[0][1:]] if rows else []
    if language not in header:
        raise ConfigError(f"{path}: no column for language {language!r} (has {', '.join(header[:12])}...); "
                          f"set {FLAG}.language to one of them")
    col = header.index(language) + 1
    try:
        table = {int(r[0]): float(r[col]) for r in rows[1:]}
    except (ValueError, IndexError) as e:
        raise DataError(f"{path}: not a cutoff table (percentile,<lang>...) of numbers ({e})") from e
    missing = [p for p in (percentile_head, percentile_tail) if p not in table]
    if missing:
        raise ConfigError(f"{path}: no row for percentile(s) {missing}; set {FLAG}.percentile_head/tail "
                          f"to rows it has (0..{max(table)})")
    return table[percentile_head], table[percentile_tail]


class DocPerplexity:
    """A page's perplexity under an n-gram LM, cc_net's way (the model is loaded on first use)."""

    def __init__(self, model: str, sp_model: str = "", normalize: bool = True, use_kenlm: bool = True):
        self.model_path = model
        self.use_kenlm = use_kenlm
        self.tokenize = LineTokenizer(sp_model, normalize)
        self._lm = None

    def __getstate__(self):  # models are loaded where the step runs, not pickled with it
        return {**self.__dict__, "_lm": None}

    def __call__(self, text: str) -> float | None:
        """``10 ** (-log10 P / (tokens + lines))`` rounded to 0.1; None for a page with no words."""
        if self._lm is None:
            self._lm = load_language_model(self.model_path, f"{FLAG}.model", self.use_kenlm)
        log_score, length = 0.0, 0
        for line in text.split("\n"):
            tokens = self.tokenize(line)
            if not tokens:
                continue  # cc_net scores empty lines too; they carry no evidence of quality
            log_score += self._lm.score(tokens)
            length += len(tokens.split()) + 1
        if length == 0:
            return None
        return round(10.0 ** (-log_score / length), 1)


def _scores_language(doc, language: str) -> bool:
    lang = doc.metadata.get("language")
    return not lang or not language or lang == language


def in_sample(text: str, rate: float) -> bool:
    """Whether a page is in the cut-off sample: SHA-1 of its text below `rate` (shard-independent)."""
    if rate >= 1.0:
        return True
    digest = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return digest < rate * 2**64


class PerplexitySampler(PipelineStep):
    """Index pass 1: write the perplexities of the sampled pages to ``<folder>/<rank>.json``."""

    name = "perplexity sample"
    type = "📊 - STATS"

    def __init__(self, scorer: DocPerplexity, folder: str, language: str, sample_rate: float):
        super().__init__()
        self.scorer, self.folder, self.language, self.sample_rate = scorer, folder, language, sample_rate

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Score the sampled pages of this task; yields nothing (an index pass)."""
        values = []
        for doc in data or ():
            if _scores_language(doc, self.language) and in_sample(doc.text, self.sample_rate):
                perplexity = self.scorer(doc.text)
                if perplexity is not None:
                    values.append(perplexity)
        os.makedirs(self.folder, exist_ok=True)
        atomic_write(os.path.join(self.folder, f"{rank:05d}.json"), json.dumps(values).encode("utf-8"))
        yield from ()


def percentile_cutoffs(values, percentile_head: float, percentile_tail: float) -> tuple[float, float]:
    """(head, tail) perplexities at the two percentiles (numpy linear interpolation) of `values`."""
    data = np.sort(np.asarray(values, dtype=np.float64))  # [n]
    if data.size == 0:
        raise DataError("perplexity: no page could be scored to compute the cut-offs (empty input or "
                        f"no page in {FLAG}.language); set {FLAG}.head_cutoff/tail_cutoff or {FLAG}.cutoffs")
    head, tail = np.percentile(data, [percentile_head, percentile_tail])
    return float(head), float(tail)


class CutoffComputer(PipelineStep):
    """Index pass 2 (one task): the percentiles of every sampled perplexity, into ``cutoffs.json``."""

    name = "perplexity cutoffs"
    type = "📊 - STATS"

    def __init__(self, sample_folder: str, out: str, percentile_head: float, percentile_tail: float):
        super().__init__()
        self.sample_folder, self.out = sample_folder, out
        self.percentile_head, self.percentile_tail = percentile_head, percentile_tail

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """Merge the samples, write the cut-offs; yields nothing."""
        values: list[float] = []
        for path in sorted(glob.glob(os.path.join(self.sample_folder, "*.json"))):
            with open(path, encoding="utf-8") as f:
                values.extend(json.load(f))
        head, tail = percentile_cutoffs(values, self.percentile_head, self.percentile_tail)
        record = {"head": head, "tail": tail, "percentile_head": self.percentile_head,
                  "percentile_tail": self.percentile_tail, "sampled": len(values)}
        atomic_write(self.out, json.dumps(record).encode("utf-8"))
        yield from ()


class PerplexityFilter(BaseFilter):
    """Score, bucket and keep the pages in `keep_buckets` (cc_net's ``DocLM`` + ``PerplexityBucket``).

    `cutoffs` is a (head, tail) pair, or the path of a ``cutoffs.json`` an
    index pass writes (read on first use).
    """

    name = "perplexity"

    def __init__(self, scorer: DocPerplexity, cutoffs: tuple[float, float] | str, keep_buckets, language: str):
        super().__init__()
        self.scorer, self.cutoffs, self.language = scorer, cutoffs, language
        self.keep_buckets = tuple(keep_buckets)

    def _head_tail(self) -> tuple[float, float]:
        if isinstance(self.cutoffs, str):
            if not os.path.isfile(self.cutoffs):
                raise DataError(f"{self.cutoffs}: the perplexity cut-offs are missing (their index pass did "
                                "not run); run the whole pipeline, or set the cut-offs in the config")
            with open(self.cutoffs, encoding="utf-8") as f:
                record = json.load(f)
            self.cutoffs = (record["head"], record["tail"])
        return self.cutoffs

    def filter(self, doc) -> bool | tuple[bool, str]:
        """Keep the page if its bucket is kept; metadata gets ``perplexity`` and ``bucket``."""
        perplexity = self.scorer(doc.text) if _scores_language(doc, self.language) else None
        bucket = bucket_of(perplexity, *self._head_tail())
        doc.metadata["perplexity"] = perplexity if perplexity is not None else -1.0
        doc.metadata["bucket"] = bucket
        self.stat_update(f"bucket_{bucket}")  # every page's bucket, kept or not, for the stats table
        if perplexity is not None:
            self.stat_update("perplexity", value=perplexity)  # mean / min / max per page in stats.json
        if bucket in self.keep_buckets:
            return True
        return False, f"perplexity_{bucket}"


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The perplexity stage: the filter, plus the two cut-off passes when no cut-offs are given."""
    unknown = [b for b in cfg.keep_buckets if b not in BUCKETS]
    if unknown or not cfg.keep_buckets:
        raise ConfigError(f"{FLAG}.keep_buckets={tuple(cfg.keep_buckets)}: choose from {BUCKETS}")
    if not 0 <= cfg.percentile_head <= cfg.percentile_tail <= 100:
        raise ConfigError(f"{FLAG}.percentile_head/tail = {cfg.percentile_head}/{cfg.percentile_tail}: "
                          "need 0 <= head <= tail <= 100")
    if not 0 < cfg.sample_rate <= 1:
        raise ConfigError(f"{FLAG}.sample_rate={cfg.sample_rate}: need a share in (0, 1]")
    check_model_file(cfg.model, f"{FLAG}.model", cfg.use_kenlm)
    check_tokenisation(cfg.model, cfg.sp_model, cfg.normalize)
    scorer = DocPerplexity(cfg.model, cfg.sp_model, cfg.normalize, cfg.use_kenlm)
    passes: list[IndexPass] = []
    if cfg.cutoffs:
        cutoffs: tuple[float, float] | str = read_cutoff_csv(cfg.cutoffs, cfg.language, cfg.percentile_head,
                                                             cfg.percentile_tail)
    elif cfg.head_cutoff >= 0 or cfg.tail_cutoff >= 0:
        if not 0 <= cfg.head_cutoff <= cfg.tail_cutoff:
            raise ConfigError(f"{FLAG}.head_cutoff={cfg.head_cutoff}, tail_cutoff={cfg.tail_cutoff}: set both, "
                              "with 0 <= head <= tail (or neither, to compute them)")
        cutoffs = (float(cfg.head_cutoff), float(cfg.tail_cutoff))
    else:
        sample_folder = os.path.join(env.work_dir, "perplexity_sample")
        cutoffs = os.path.join(env.work_dir, "cutoffs.json")
        passes = [IndexPass([PerplexitySampler(scorer, sample_folder, cfg.language, cfg.sample_rate)]),
                  IndexPass([CutoffComputer(sample_folder, cutoffs, cfg.percentile_head, cfg.percentile_tail)],
                            reads_documents=False, tasks=1)]
    step = PerplexityFilter(scorer, cutoffs, cfg.keep_buckets, cfg.language)
    return Stage(env.name, [step], passes)


def check_tokenisation(model: str, sp_model: str, normalize: bool) -> None:
    """Our models record how they were tokenised (``<model>.json``); scoring another way is a `ConfigError`."""
    meta_path = model + ".json"
    if not os.path.isfile(meta_path):
        return  # a user's KenLM model: its tokenisation is the user's to match
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    trained = (meta.get("sp_model", ""), meta.get("normalize", True))
    if (os.path.basename(trained[0]), trained[1]) != (os.path.basename(sp_model), normalize):
        raise ConfigError(f"{model} was trained with sp_model={trained[0]!r}, normalize={trained[1]} "
                          f"({meta_path}); set {FLAG}.sp_model and {FLAG}.normalize to match")
