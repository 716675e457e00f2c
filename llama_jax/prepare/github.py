"""GitHub (Table 1, 4.5%): licence, file-quality and boilerplate stages.

The paper keeps "projects that are distributed under the Apache, BSD and MIT
licenses", filters "low quality files with heuristics based on the line
length or proportion of alphanumeric characters" and removes "boilerplate,
such as headers, with regular expressions". Three stages:

* ``github_license``: keep a file whose ``license`` metadata (the BigQuery
  GitHub dump's ``licenses.license`` value, e.g. ``"apache-2.0"``, ``"mit"``,
  ``"bsd-3-clause"``; a list, as in The Stack's ``max_stars_repo_licenses``,
  must be all allowed) is in ``allowed``; a missing licence is the counted
  drop ``no_license``;
* ``github_quality``: RedPajama's GitHub thresholds (also Codex's and The
  Stack's): drop a file whose longest line exceeds 1000 characters, whose
  mean line length exceeds 100, or whose alphanumeric share is under 0.25;
* ``github_boilerplate``: remove the comment blocks at the top of a file
  (after a shebang / encoding line) that carry a licence or copyright notice.
"""

from __future__ import annotations

import re

import ml_collections
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError
from llama_jax.prepare.stage import Stage, StageEnv

# The paper's three licence families, as BigQuery's github_repos.licenses spells them.
ALLOWED_LICENSES = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause")

# A leading comment block of one of the common syntaxes (C / Java / JS / Go /
# Rust block comments, // # -- ; % line comments, HTML / XML comments).
_DIRECTIVE = r"\s*(?:include|define|if|ifdef|ifndef|pragma|import|undef|endif)\b"  # C preprocessor, not comments
_LEADING_COMMENT = re.compile(
    r"\A[ \t]*(?:/\*.*?\*/|<!--.*?-->|"
    r"(?:[ \t]*(?://|#(?!" + _DIRECTIVE + r")|--|;|%)[^\n]*(?:\n|\Z))+)[ \t]*\n?",
    re.DOTALL,
)
_SHEBANG = re.compile(r"\A(?:#![^\n]*\n|[ \t]*#.*coding[:=][^\n]*\n)+")
_LICENSE_WORDS = re.compile(
    r"copyright|licen[cs]e|spdx-license-identifier|all rights reserved|permission is hereby granted"
    r"|without warranty|warranties",
    re.IGNORECASE,
)


def default_config_github_license() -> ml_collections.ConfigDict:
    """The allowed licences and the metadata field that holds a file's licence."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.field = "license"
    c.allowed = ALLOWED_LICENSES
    return c


def default_config_github_quality() -> ml_collections.ConfigDict:
    """RedPajama's GitHub file thresholds."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.max_line_length = 1000
    c.mean_line_length = 100.0
    c.min_alnum_fraction = 0.25
    return c


def default_config_github_boilerplate() -> ml_collections.ConfigDict:
    """Only ``enabled``: the header patterns are fixed (see `strip_license_header`)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    return c


class LicenseFilter(BaseFilter):
    """Keeps files whose licence metadata is in `allowed` (lower-cased, stripped)."""

    name = "GitHub licence"

    def __init__(self, field: str, allowed):
        super().__init__()
        self.field = field
        self.allowed = frozenset(a.strip().lower() for a in allowed)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """False with ``no_license`` or ``license_not_allowed``."""
        value = doc.metadata.get(self.field)
        values = value if isinstance(value, (list, tuple)) else [value]
        values = [str(v).strip().lower() for v in values if v is not None and str(v).strip()]
        if not values:
            return False, "no_license"
        if all(v in self.allowed for v in values):
            return True
        return False, "license_not_allowed"


def line_stats(text: str) -> tuple[int, float, float]:
    """(longest line, mean line length, alphanumeric share) of `text`, in characters."""
    lengths = [len(line) for line in text.splitlines()] or [0]
    alnum = sum(ch.isalnum() for ch in text)
    return max(lengths), sum(lengths) / len(lengths), alnum / max(len(text), 1)


class QualityFilter(BaseFilter):
    """Drops a file by its longest line, mean line length or alphanumeric share."""

    name = "GitHub file quality"

    def __init__(self, max_line_length: int, mean_line_length: float, min_alnum_fraction: float):
        super().__init__()
        self.max_line_length = max_line_length
        self.mean_line_length = mean_line_length
        self.min_alnum_fraction = min_alnum_fraction

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """False with ``empty``, ``max_line_length``, ``mean_line_length`` or ``alnum_fraction``."""
        if not doc.text.strip():
            return False, "empty"
        longest, mean, alnum = line_stats(doc.text)
        if longest > self.max_line_length:
            return False, "max_line_length"
        if mean > self.mean_line_length:
            return False, "mean_line_length"
        if alnum < self.min_alnum_fraction:
            return False, "alnum_fraction"
        return True


def strip_license_header(text: str) -> tuple[str, int]:
    """`text` without its leading licence / copyright comment blocks; and how many were removed.

    A shebang or encoding line stays; blank lines between removed blocks go
    too. A leading comment without licence words (a module's own description)
    stops the removal and is kept.
    """
    shebang = _SHEBANG.match(text)
    head = shebang.group(0) if shebang else ""
    body = text[len(head):]
    removed = 0
    while True:
        stripped = body.lstrip("\n")
        match = _LEADING_COMMENT.match(stripped)
        if not match or not _LICENSE_WORDS.search(match.group(0)):
            break
        body = stripped[match.end():]
        removed += 1
    if not removed:
        return text, 0
    return head + body.lstrip("\n"), removed


class BoilerplateStripper(BaseFilter):
    """Removes licence headers; a file left empty is dropped (``empty_after_boilerplate``)."""

    name = "GitHub boilerplate"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """Rewrites ``doc.text``; counts ``license_header_removed``."""
        text, removed = strip_license_header(doc.text)
        if removed:
            self.stat_update("license_header_removed")
            doc.text = text
            if not text.strip():
                return False, "empty_after_boilerplate"
        return True


def build_github_license(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The licence filter."""
    if isinstance(cfg.allowed, str) or not cfg.allowed:
        raise ConfigError(f"--config.{env.name}.allowed={cfg.allowed!r}; give a tuple of licence keys, "
                          f"e.g. {ALLOWED_LICENSES!r}")
    if not cfg.field:
        raise ConfigError(f"--config.{env.name}.field is empty; name the metadata field holding the licence")
    return Stage(name=env.name, steps=[LicenseFilter(cfg.field, cfg.allowed)])


def build_github_quality(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The line-length and alphanumeric-share filter."""
    if cfg.max_line_length <= 0 or cfg.mean_line_length <= 0 or not 0 <= cfg.min_alnum_fraction <= 1:
        raise ConfigError(f"--config.{env.name}: max_line_length and mean_line_length must be > 0 and "
                          f"min_alnum_fraction in [0, 1]; got {cfg.max_line_length}, {cfg.mean_line_length}, "
                          f"{cfg.min_alnum_fraction}")
    return Stage(name=env.name, steps=[QualityFilter(cfg.max_line_length, cfg.mean_line_length,
                                                     cfg.min_alnum_fraction)])


def build_github_boilerplate(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The licence-header remover."""
    del cfg
    return Stage(name=env.name, steps=[BoilerplateStripper()])
