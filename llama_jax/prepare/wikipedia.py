"""Wikipedia (Table 1, 4.5%): the paper's 20 languages, markup removed; stage ``wikipedia``.

"Wikipedia dumps from the June-August 2022 period, covering 20 languages,
which use either the Latin or Cyrillic scripts ... We process the data to
remove hyperlinks, comments and other formatting boilerplate." Two steps:

* `LanguageFilter`: keep a page whose language (metadata ``language`` or,
  failing that, the ``<code>.wikipedia.org`` host of its ``url``) is one of
  `LANGUAGES`; a page with neither is the counted drop ``no_language``;
* `WikitextCleaner` (``markup="wikitext"``, pages straight from the XML
  dumps): comments, ``<ref>``s, templates ``{{...}}``, tables ``{|...|}``,
  file / category / interlanguage links removed; ``[[target|label]]`` ->
  label, ``[[target]]`` -> target, ``[http://.. text]`` -> text; bold and
  italics quotes removed; ``== headings ==`` kept as their text; list
  markers, magic words and HTML tags removed, entities decoded. Redirect
  pages are dropped (``redirect``). ``markup="text"`` skips the cleaning for
  text already extracted (e.g. by WikiExtractor or the HF ``wikipedia`` set).

Input: JSONL pages, or the dumps themselves (``<lang>wiki-<date>-pages-
articles*.xml[.bz2]``) through `WikipediaDumpReader`.
"""

from __future__ import annotations

import bz2
import html
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urlparse

import ml_collections
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.logging import logger

from llama_jax.errors import ConfigError
from llama_jax.prepare.readers import FileListReader
from llama_jax.prepare.stage import Stage, StageEnv

LANGUAGES = ("bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
             "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk")

# File / image / category / media namespaces of the 20 languages (lower case).
_DROP_NAMESPACES = frozenset("""
file image media category datei bild kategorie fichier catégorie archivo imagen categoría immagine
categoria bestand afbeelding categorie plik grafika kategoria ficheiro arquivo imagem fișier
imagine файл изображение категория категорія зображення soubor obrázek fil kategori fitxer
imatge datoteka slika kategorija fájl kép kategória датотека слика категорија
""".split())

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref(?:\s[^>]*)?/>|<ref(?:\s[^>]*)?>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_DROP_TAGS = re.compile(r"<(gallery|timeline|score|graph|imagemap|references)\b[^>]*>.*?</\1\s*>",
                        re.DOTALL | re.IGNORECASE)
_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.DOTALL)  # innermost {{...}}
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)  # innermost {|...|}
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")  # innermost [[...]]
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BOLD_ITALIC = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$", re.MULTILINE)
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_MAGIC = re.compile(r"__[A-Z]+__")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_REDIRECT = re.compile(r"\A\s*#\s*(redirect|weiterleitung|redirection|redirección|rinvia|"
                       r"doorverwijzing|przekierowanie|redirecionamento|перенаправление|перенаправлення)\b",
                       re.IGNORECASE)


def default_config() -> ml_collections.ConfigDict:
    """The paper's 20 languages; input ``markup`` "wikitext" (dumps) or "text" (extracted)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.languages = LANGUAGES
    c.language_field = "language"
    c.markup = "wikitext"
    return c


def _replace_link(match: re.Match) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    prefix, colon, _ = target.strip().partition(":")
    if colon and not target.startswith(":"):
        prefix = prefix.strip().lower()
        if prefix in _DROP_NAMESPACES or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix):
            return ""  # files, categories, interlanguage links
    if label:
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":").split("#")[0] if not target.startswith("#") else target[1:]


def _until_stable(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def clean_wikitext(text: str) -> str:
    """The readable text of a page's wikitext (rules in the module docstring)."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _DROP_TAGS.sub("", text)
    text = _until_stable(_TEMPLATE, "", text)
    text = _until_stable(_TABLE, "", text)
    text = _until_stable(_LINK, _replace_link, text)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _RULE.sub("", text)
    text = _LIST_MARK.sub("", text)
    text = _MAGIC.sub("", text)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("\u00a0", " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def page_language(doc: Document, field: str) -> str | None:
    """The page's language code: metadata `field`, else the host of metadata ``url``."""
    value = doc.metadata.get(field)
    if value:
        return str(value).strip().lower()
    url = doc.metadata.get("url")
    if url:
        host = urlparse(str(url)).hostname or ""
        if host.endswith(".wikipedia.org"):
            return host.split(".")[0]
    return None


class LanguageFilter(BaseFilter):
    """Keeps pages in `languages` (``no_language`` / ``language_not_kept`` drops)."""

    name = "Wikipedia languages"

    def __init__(self, languages, field: str):
        super().__init__()
        self.languages = frozenset(languages)
        self.field = field

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """True for a page in one of the kept languages."""
        lang = page_language(doc, self.field)
        if lang is None:
            return False, "no_language"
        if lang not in self.languages:
            return False, "language_not_kept"
        self.stat_update(f"lang_{lang}")
        return True


class WikitextCleaner(BaseFilter):
    """Rewrites wikitext as plain text; drops redirects and pages left empty."""

    name = "Wikipedia wikitext cleaner"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """False with ``redirect`` or ``empty``; otherwise the text is cleaned in place."""
        if _REDIRECT.match(doc.text):
            return False, "redirect"
        doc.text = clean_wikitext(doc.text)
        if not doc.text:
            return False, "empty"
        return True


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class WikipediaDumpReader(FileListReader):
    """Reads MediaWiki XML dumps (``.xml`` or ``.xml.bz2``): one document per article.

    Only main-namespace pages (``<ns>0</ns>``) are read; the language is the
    file name's ``<lang>wiki-`` prefix; id ``<lang>/<page id>``, metadata
    ``title``, ``language`` and ``url``. A file that is not well-formed XML is
    the counted skip ``skipped_malformed_xml`` (its pages before the error
    are kept; the error is logged with the file). Task ``rank`` of
    ``world_size`` reads ``files[rank::world_size]``.
    """

    name = "📖 Wikipedia XML dump"

    def read_file(self, filepath: str) -> Iterator[Document]:
        """The articles of one dump file."""
        match = re.match(r"([a-z\-]+?)wiki-", os.path.basename(filepath))
        lang = match.group(1).replace("_", "-") if match else ""
        opener = bz2.open if filepath.endswith(".bz2") else open
        page: dict[str, str] = {}
        try:
            with opener(filepath, "rb") as f:
                for _, elem in ET.iterparse(f, events=("end",)):
                    tag = _local(elem.tag)
                    if tag in ("title", "ns", "id", "text") and tag not in page:
                        page[tag] = elem.text or ""
                    elif tag == "page":
                        if page.get("ns") == "0" and page.get("text", "").strip():
                            title = page.get("title", "")
                            yield Document(text=page["text"], id=f"{lang}/{page.get('id', title)}", metadata={
                                "title": title, "language": lang, "file_path": filepath,
                                "url": f"https://{lang}.wikipedia.org/wiki/{title.replace(' ', '_')}"})
                        page = {}
                        elem.clear()
        except (ET.ParseError, OSError, EOFError) as e:
            self.stat_update("skipped_malformed_xml")
            logger.warning(f"skipped the rest of {filepath}: {type(e).__name__}: {e}; re-download the dump")

def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The language filter, then (for wikitext) the cleaner."""
    languages = (cfg.languages,) if isinstance(cfg.languages, str) else tuple(cfg.languages)
    bad = [code for code in languages if not re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", str(code))]
    if bad or not languages:
        raise ConfigError(f"--config.{env.name}.languages has unknown language codes {bad}: use Wikipedia's "
                          f"lower-case codes, e.g. {LANGUAGES!r} (the paper's 20)")
    if cfg.markup not in ("wikitext", "text"):
        raise ConfigError(f"--config.{env.name}.markup={cfg.markup!r}; use 'wikitext' (XML dumps) or 'text' "
                          "(already extracted)")
    steps = [LanguageFilter(languages, cfg.language_field)]
    if cfg.markup == "wikitext":
        steps.append(WikitextCleaner())
    return Stage(name=env.name, steps=steps)
