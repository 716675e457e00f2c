"""StackExchange (Table 1, 2%): the largest sites, one document per question; stage ``stackexchange``.

"We kept the data from the 28 largest websites, removed the HTML tags from
text and sorted the answers by score (from highest to lowest)." Input:

* the published dump (``<site>/Posts.xml`` per site) through
  `StackExchangeXmlReader`: one document per question (``PostTypeId`` 1),
  its HTML body in ``text`` and ``site``, ``title``, ``score`` and
  ``answers`` (``[{"id", "score", "text"}]``, from the ``PostTypeId`` 2 rows
  whose ``ParentId`` is the question) in metadata;
* or JSONL records of that same shape (``text`` = the question's HTML body).

The stage keeps `SITES` (``site`` as a domain, ``math.stackexchange.com``,
or its short name, ``math``), then writes each document as the question's
title and body followed by its answers, highest score first (ties: lower
post id first), every part with its HTML tags removed. Which 28 sites the
paper kept is not published: `SITES` is the 28 largest English sites by dump
size (our choice; override with ``--config.stackexchange.sites``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser

import ml_collections
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.logging import logger

from llama_jax.errors import ConfigError
from llama_jax.prepare.readers import FileListReader
from llama_jax.prepare.stage import Stage, StageEnv

SITES = (
    "stackoverflow.com", "math.stackexchange.com", "superuser.com", "serverfault.com",
    "askubuntu.com", "unix.stackexchange.com", "tex.stackexchange.com", "electronics.stackexchange.com",
    "physics.stackexchange.com", "stats.stackexchange.com", "english.stackexchange.com", "mathoverflow.net",
    "gis.stackexchange.com", "apple.stackexchange.com", "salesforce.stackexchange.com",
    "softwareengineering.stackexchange.com", "codereview.stackexchange.com", "ell.stackexchange.com",
    "wordpress.stackexchange.com", "magento.stackexchange.com", "dba.stackexchange.com",
    "gaming.stackexchange.com", "scifi.stackexchange.com", "security.stackexchange.com",
    "diy.stackexchange.com", "mathematica.stackexchange.com", "sharepoint.stackexchange.com",
    "worldbuilding.stackexchange.com",
)
_BLOCK_TAGS = frozenset("p div br li ul ol pre blockquote h1 h2 h3 h4 h5 h6 hr table tr".split())


def site_key(site: str) -> str:
    """A site's short name: ``math.stackexchange.com`` and ``math`` -> ``math``."""
    site = str(site).strip().lower().removeprefix("https://").removeprefix("http://").rstrip("/")
    for suffix in (".stackexchange.com", ".com", ".net"):
        if site.endswith(suffix):
            return site[: -len(suffix)]
    return site


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag):
        if tag in _BLOCK_TAGS and tag not in ("li", "br", "hr"):
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(html_text: str) -> str:
    """`html_text` without tags, entities decoded, paragraphs kept as blank-line breaks."""
    parser = _TextExtractor()
    parser.feed(html_text)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.parts).split("\n")]
    text = "\n".join(lines).strip()
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def format_question(title: str, body_html: str, answers: Sequence[dict]) -> str:
    """Title, question and answers (highest score first, ties by id), tags removed."""
    ranked = sorted(answers, key=lambda a: (-int(a["score"]), int(a.get("id") or 0)))
    parts = [title.strip()] if title and title.strip() else []
    parts.append(html_to_text(body_html))
    parts += [html_to_text(a["text"]) for a in ranked]
    return "\n\n".join(p for p in parts if p)


class SiteFilter(BaseFilter):
    """Keeps questions of the listed sites (``no_site`` / ``site_not_kept`` drops)."""

    name = "StackExchange sites"

    def __init__(self, sites: Sequence[str]):
        super().__init__()
        self.sites = frozenset(site_key(s) for s in sites)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """True for a question of a kept site."""
        site = doc.metadata.get("site")
        if not site:
            return False, "no_site"
        return True if site_key(site) in self.sites else (False, "site_not_kept")


class QuestionFormatter(BaseFilter):
    """Writes a question with its ranked answers as the document text.

    Drops ``no_answers_field`` (metadata without an ``answers`` list),
    ``malformed_answer`` (an answer without an integer ``score`` or a string
    ``text``) and ``too_few_answers`` (fewer than `min_answers`).
    """

    name = "StackExchange Q&A"

    def __init__(self, min_answers: int):
        super().__init__()
        self.min_answers = min_answers

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """True with ``doc.text`` rewritten; ``answers`` leaves the metadata."""
        answers = doc.metadata.get("answers")
        if not isinstance(answers, list):
            return False, "no_answers_field"
        for a in answers:
            if not isinstance(a, dict) or not isinstance(a.get("text"), str):
                return False, "malformed_answer"
            try:
                int(a.get("score"))
            except (TypeError, ValueError):
                return False, "malformed_answer"
        if len(answers) < self.min_answers:
            return False, "too_few_answers"
        doc.text = format_question(str(doc.metadata.get("title") or ""), doc.text, answers)
        doc.metadata["answer_count"] = len(answers)
        del doc.metadata["answers"]
        return bool(doc.text) or (False, "empty")


class StackExchangeXmlReader(FileListReader):
    """Reads ``Posts.xml`` dumps: one document per question with its answers in metadata.

    The site is the name of the folder holding ``Posts.xml`` (the dump's
    layout, ``math.stackexchange.com/Posts.xml``). Counted skips: a row
    without ``Id`` / ``PostTypeId`` / ``Body`` (``skipped_row_missing_field``) or
    with a non-integer ``Id`` / ``Score`` / ``ParentId`` (``skipped_row_bad_number``),
    an answer whose question is absent (``skipped_orphan_answer``), and a file
    that is not well-formed XML (``skipped_malformed_xml``: its questions
    parsed before the error are kept, the error is logged with file and line).
    Task ``rank`` of ``world_size`` reads ``files[rank::world_size]``.
    """

    name = "📖 StackExchange Posts.xml"

    def read_file(self, filepath: str) -> Iterator[Document]:
        """The questions of one ``Posts.xml``, in post id order."""
        site = os.path.basename(os.path.dirname(filepath))
        questions: dict[int, dict] = {}
        answers: dict[int, list[dict]] = {}
        try:
            for _, elem in ET.iterparse(filepath, events=("end",)):
                if elem.tag == "row":
                    self._add_row(elem.attrib, questions, answers, filepath)
                    elem.clear()
        except ET.ParseError as e:
            self.stat_update("skipped_malformed_xml")
            logger.warning(f"skipped the rest of {filepath}: not well-formed XML ({e}); "
                           f"{len(questions)} questions read before it are kept. Re-extract the dump")
        for pid in sorted(answers):
            if pid not in questions:
                self.stat_update("skipped_orphan_answer", value=len(answers[pid]))
        for qid in sorted(questions):
            q = questions[qid]
            yield Document(text=q.pop("body"), id=f"{site}/{qid}",
                           metadata={**q, "site": site, "answers": answers.get(qid, []), "file_path": filepath})

    def _add_row(self, row: dict, questions: dict, answers: dict, filepath: str) -> None:
        missing = [k for k in ("Id", "PostTypeId", "Body") if k not in row]
        if row.get("PostTypeId") == "2" and "ParentId" not in row:
            missing.append("ParentId")
        if missing:
            self.stat_update("skipped_row_missing_field")
            logger.warning(f"skipped a row of {filepath} (Id={row.get('Id')}): no {', '.join(missing)}")
            return
        try:
            kind, pid, score = row["PostTypeId"], int(row["Id"]), int(row.get("Score") or 0)
            parent = int(row["ParentId"]) if kind == "2" else None
        except ValueError:
            self.stat_update("skipped_row_bad_number")
            logger.warning(f"skipped a row of {filepath} (Id={row.get('Id')}): Id, Score or ParentId "
                           "is not an integer")
            return
        if kind == "1":
            questions[pid] = {"body": row["Body"], "title": row.get("Title", ""), "score": score,
                              "question_id": pid}
        elif kind == "2":
            answers.setdefault(parent, []).append({"id": pid, "score": score, "text": row["Body"]})

def default_config() -> ml_collections.ConfigDict:
    """The 28 sites kept and the fewest answers a kept question needs."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.sites = SITES
    c.min_answers = 0
    return c


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The site filter, then the question/answers formatter."""
    sites = (cfg.sites,) if isinstance(cfg.sites, str) else tuple(cfg.sites)
    if not sites:
        raise ConfigError(f"--config.{env.name}.sites is empty; list the sites to keep, e.g. "
                          "('math.stackexchange.com', 'superuser.com')")
    if cfg.min_answers < 0:
        raise ConfigError(f"--config.{env.name}.min_answers={cfg.min_answers}; use 0 or more")
    return Stage(name=env.name, steps=[SiteFilter(sites), QuestionFormatter(cfg.min_answers)])
