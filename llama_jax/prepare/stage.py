"""The interface of a preparation stage, and the registry of stage names.

A stage is a named piece of a source's cleaning (``line_dedup``, ``language``,
``c4_quality``, ``minhash`` ...). Its module exposes two functions:

* ``default_config() -> ml_collections.ConfigDict``: the stage's options with
  the paper's / cc_net's defaults, always including ``enabled`` (True);
* ``build(cfg: ConfigDict, env: StageEnv) -> Stage``: the datatrove steps.

Most stages are a list of datatrove `PipelineStep`s (filters subclass
`datatrove.pipeline.filters.base_filter.BaseFilter` and return
``(False, reason)`` so that datatrove counts every drop reason; formatters
rewrite ``doc.text``) that run inside the document flow. A stage that needs
the whole group of shards first (line dedup, exact or MinHash dedup) also
lists `IndexPass`es: the pipeline ends the flow before the stage, writes the
documents to an intermediate folder, runs the passes over it (each as its own
executor run, depending on the previous one), then reads the intermediate
folder again into the stage's `steps`, which use the index the passes wrote
under ``env.work_dir``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from llama_jax.errors import ConfigError

# Stage name -> the module that implements it (imported on first use, so a
# source's config only imports what it runs).
REGISTRY: dict[str, str] = {
    # CommonCrawl, the CCNet way (configs/prepare/ccnet.py).
    "line_dedup": "llama_jax.prepare.line_dedup",
    "language": "llama_jax.prepare.language",
    "perplexity": "llama_jax.prepare.perplexity",
    "reference": "llama_jax.prepare.reference",
    # The other sources of Table 1.
    "c4_quality": "llama_jax.prepare.c4",
    "github_license": "llama_jax.prepare.github",
    "github_quality": "llama_jax.prepare.github",
    "github_boilerplate": "llama_jax.prepare.github",
    "exact_dedup": "llama_jax.prepare.exact_dedup",
    "wikipedia": "llama_jax.prepare.wikipedia",
    "minhash": "llama_jax.prepare.minhash",
    "arxiv": "llama_jax.prepare.arxiv",
    "stackexchange": "llama_jax.prepare.stackexchange",
}


@dataclasses.dataclass(frozen=True)
class StageEnv:
    """Where and how a stage runs (set by the pipeline, not by the user).

    Attributes:
      name: the stage's name (a `REGISTRY` key).
      work_dir: a folder private to this stage for its index files.
      tasks: the number of datatrove tasks (shards) of the run.
    """

    name: str
    work_dir: str
    tasks: int


@dataclasses.dataclass(frozen=True)
class IndexPass:
    """One executor run that must finish before a stage's `steps` run.

    Attributes:
      steps: datatrove steps of the pass.
      reads_documents: True for a pass fed the stage's input documents (the
        pipeline puts a reader of the intermediate folder in front); False
        for a pass that reads only index files written by an earlier pass.
      tasks: the pass's number of tasks (None: the run's `StageEnv.tasks`).
    """

    steps: Sequence[Any]
    reads_documents: bool = True
    tasks: int | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """What `build` returns: the steps in the document flow, and any index passes."""

    name: str
    steps: Sequence[Any]
    index_passes: Sequence[IndexPass] = ()


def stage_module(name: str):
    """The module implementing stage `name`; an unknown name is a `ConfigError`."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown preparation stage {name!r}; known stages: "
                          f"{', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


def default_config(name: str):
    """The default options of stage `name` (its module's ``default_config``)."""
    module = stage_module(name)
    fn: Callable[..., Any] = getattr(module, f"default_config_{name}", None) or module.default_config
    return fn()


def build(name: str, cfg, env: StageEnv) -> Stage:
    """Stage `name` built from its options `cfg` (its module's ``build``)."""
    module = stage_module(name)
    fn: Callable[..., Any] = getattr(module, f"build_{name}", None) or module.build
    return fn(cfg, env)
