"""ArXiv (Table 1, 2.5%): LaTeX sources cleaned as the paper says; stage ``arxiv``.

"We process arXiv LaTeX files ... following Lewkowycz et al. (2022), we
removed everything before the first section, as well as the bibliography. We
also removed the comments from the .tex files, and inline-expanded
definitions and macros written by users." In order:

1. ``%`` comments removed (a ``%`` after an even number of backslashes; ``\\%``
   is a percent sign and stays); a line that was only a comment goes;
2. user macros (`latex_macros`) collected from the whole file, preamble
   included, and their definitions removed;
3. everything before the first ``\\section`` (or ``\\chapter``) removed; a
   file with none is the counted drop ``no_section``; ``\\end{document}`` and
   what follows removed;
4. the bibliography removed: ``thebibliography`` environments and the
   ``\\bibliography{..}``, ``\\bibliographystyle{..}``, ``\\printbibliography``
   commands;
5. the macros expanded inline.

Input: JSONL documents with the ``.tex`` source in ``text``, or a folder of
``.tex`` files through `TexFileReader` (one document per file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import ml_collections
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.logging import logger

from llama_jax.errors import ConfigError
from llama_jax.prepare.latex_macros import expand_macros, extract_macros
from llama_jax.prepare.readers import FileListReader
from llama_jax.prepare.stage import Stage, StageEnv

_COMMENT = re.compile(r"(?<!\\)((?:\\\\)*)%.*$", re.MULTILINE)
_COMMENT_ONLY_LINE = re.compile(r"^[ \t]*(?<!\\)%.*\n", re.MULTILINE)
_BIBLIOGRAPHY = re.compile(
    r"\\begin\{thebibliography\}.*?(?:\\end\{thebibliography\}|\Z)"
    r"|\\bibliography(?:style)?\s*\{[^}]*\}|\\printbibliography\b(?:\[[^\]]*\])?",
    re.DOTALL,
)
_END_DOCUMENT = re.compile(r"\\end\{document\}.*\Z", re.DOTALL)


def default_config() -> ml_collections.ConfigDict:
    """``section_commands``: the commands whose first use starts the kept text."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.section_commands = ("section", "chapter")
    return c


def remove_comments(tex: str) -> str:
    """`tex` without ``%`` comments (``\\%`` kept); comment-only lines removed whole."""
    tex = _COMMENT_ONLY_LINE.sub("", tex)
    return _COMMENT.sub(lambda m: m.group(1), tex)


def clean_tex(tex: str, section_commands: Sequence[str] = ("section", "chapter")) -> str | None:
    """The cleaned text of one ``.tex`` source, or None when it has no section."""
    tex = remove_comments(tex)
    tex, macros = extract_macros(tex)
    names = "|".join(re.escape(c) for c in section_commands)
    first = re.search(r"\\(?:" + names + r")\*?\s*[\[{]", tex)
    if first is None:
        return None
    tex = tex[first.start():]
    tex = _END_DOCUMENT.sub("", tex)
    tex = _BIBLIOGRAPHY.sub("", tex)
    tex = expand_macros(tex, macros)
    tex = re.sub(r"[ \t]+\n", "\n", tex)
    return re.sub(r"\n{3,}", "\n\n", tex).strip()


class ArxivCleaner(BaseFilter):
    """Rewrites a document's LaTeX (`clean_tex`); drops ``no_section`` and ``empty``."""

    name = "ArXiv LaTeX cleaner"

    def __init__(self, section_commands: Sequence[str]):
        super().__init__()
        self.section_commands = tuple(section_commands)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """True with ``doc.text`` cleaned in place."""
        text = clean_tex(doc.text, self.section_commands)
        if text is None:
            return False, "no_section"
        if not text:
            return False, "empty"
        doc.text = text
        return True


class TexFileReader(FileListReader):
    """One document per ``.tex`` file (id: the path); a file that is not UTF-8 is a counted skip.

    Task ``rank`` of ``world_size`` reads ``files[rank::world_size]``.
    """

    name = "📖 .tex files"

    def read_file(self, filepath: str) -> Iterator[Document]:
        """The file's document, or nothing (``skipped_not_utf8`` / ``skipped_empty_text``)."""
        with open(filepath, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.stat_update("skipped_not_utf8")
            logger.warning(f"skipped {filepath}: not UTF-8 (bytes {e.start}..{e.end}); re-encode it as UTF-8")
            return
        if not text.strip():
            self.stat_update("skipped_empty_text")
            return
        yield Document(text=text, id=filepath, metadata={"file_path": filepath})



def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The LaTeX cleaner."""
    commands = (cfg.section_commands,) if isinstance(cfg.section_commands, str) else tuple(cfg.section_commands)
    if not commands or not all(re.fullmatch(r"[A-Za-z]+", c) for c in commands):
        raise ConfigError(f"--config.{env.name}.section_commands={cfg.section_commands!r}; give command "
                          "names without backslash, e.g. ('section', 'chapter')")
    return Stage(name=env.name, steps=[ArxivCleaner(commands)])
