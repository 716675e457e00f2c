"""The ArXiv stage on a small .tex file with macros, comments and a bibliography."""

import json

import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError
from llama_jax.prepare import arxiv, pipeline, stage
from llama_jax.prepare.arxiv import TexFileReader, clean_tex, remove_comments
from llama_jax.prepare.config import source_config
from llama_jax.prepare.latex_macros import expand_macros, extract_macros
from llama_jax.prepare.readers import make_reader

PAPER = r"""\documentclass{article}
\usepackage{amsmath}
\newcommand{\R}{\mathbb{R}}   % the reals
\newcommand\norm[1]{\left\| #1 \right\|}
\renewcommand*{\pair}[2]{(#1, #2)}
\newcommand{\greet}[2][Hello]{#1, #2}
\def\eps{\varepsilon}
\def\sq#1{{#1}^2}
\DeclareMathOperator{\argmax}{arg\,max}
\title{A Paper}
\begin{document}
\maketitle
\begin{abstract}The abstract goes.\end{abstract}
% a whole-line comment
\section{Introduction}
We show $\norm{x} \le \eps$ for $x \in \R$, at 5\% cost. % trailing comment
Pairs \pair{a}{\R}; \greet{World}; \greet[Hi]{you}; $\sq{y}$; $\argmax_x$; \Real stays.
A line break \\% comment right after it
\section{Method}
Text \cite{a}.
\bibliographystyle{plain}
\begin{thebibliography}{9}
\bibitem{a} A. Author. A title. 2020.
\end{thebibliography}
\end{document}
"""

EXPECTED = r"""\section{Introduction}
We show $\left\| x \right\| \le \varepsilon$ for $x \in \mathbb{R}$, at 5\% cost.
Pairs (a, \mathbb{R}); Hello, World; Hi, you; ${y}^2$; $\operatorname{arg\,max}_x$; \Real stays.
A line break \\
\section{Method}
Text \cite{a}."""


def test_clean_tex_on_a_small_paper():
    assert clean_tex(PAPER) == EXPECTED


def test_comments_removed_but_escaped_percent_kept():
    assert remove_comments("a 5\\% b % c\n% whole\nd\n") == "a 5\\% b \nd\n"
    assert remove_comments("x \\\\% y\n") == "x \\\\\n"


def test_macro_definitions_parsed_and_expanded():
    body, macros = extract_macros(r"\newcommand{\a}{A}\newcommand{\b}[1]{[\a#1]}X \b{y} \ab")
    assert body == r"X \b{y} \ab" and set(macros) == {"a", "b"}
    assert expand_macros(body, macros) == r"X [Ay] \ab"


def test_self_referencing_macro_does_not_loop():
    body, macros = extract_macros(r"\renewcommand{\x}{\x x}\x")
    assert expand_macros(body, macros).endswith("x")


def test_delimited_def_is_removed_not_expanded():
    body, macros = extract_macros(r"\def\a#1.{<#1>}text")
    assert body == "text" and macros == {}


def test_bibliography_commands_removed():
    tex = "\\section{A}\nBody.\n\\bibliography{refs}\n\\printbibliography\n"
    assert clean_tex(tex) == "\\section{A}\nBody."


def test_stage_drops_files_without_a_section():
    built = arxiv.build(arxiv.default_config(), stage.StageEnv(name="arxiv", work_dir="/tmp/unused", tasks=1))
    docs = [Document(text=PAPER, id="p"), Document(text="\\begin{document}No sections.\\end{document}", id="n")]
    out = list(built.steps[0].run(iter(docs)))
    assert [d.text for d in out] == [EXPECTED]
    assert built.steps[0].stats["dropped_no_section"].total == 1


def test_tex_file_reader(tmp_path):
    (tmp_path / "a.tex").write_text(PAPER)
    (tmp_path / "b.tex").write_bytes(b"\\section{x} \xff\xfe bad")
    reader = TexFileReader([str(tmp_path / "a.tex"), str(tmp_path / "b.tex")])
    docs = list(reader.run())
    assert [d.id for d in docs] == [str(tmp_path / "a.tex")] and docs[0].text == PAPER
    assert reader.stats["skipped_not_utf8"].total == 1
    assert isinstance(make_reader("tex", [str(tmp_path / "a.tex")]), TexFileReader)


def test_tex_files_through_the_cli_pipeline(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tex").write_text(PAPER)
    cfg = source_config(("arxiv",))
    cfg.input, cfg.output, cfg.input_format = str(tmp_path / "in"), str(tmp_path / "out"), "tex"
    pipeline.run(cfg, print_table=False)
    with open(tmp_path / "out" / "data" / "00000.jsonl") as f:
        (record,) = [json.loads(line) for line in f]
    assert record["text"] == clean_tex(PAPER)


def test_config_error():
    cfg = arxiv.default_config()
    cfg.section_commands = ("\\section",)
    with pytest.raises(ConfigError, match="section_commands"):
        arxiv.build(cfg, stage.StageEnv(name="arxiv", work_dir="/tmp/unused", tasks=1))


def test_argument_after_a_control_word_stays_a_separate_token():
    body, macros = extract_macros(r"\newcommand{\va}[1]{\alpha#1}\va{x} \va{1}")
    assert expand_macros(body, macros) == r"\alpha x \alpha1"
