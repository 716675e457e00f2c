"""User-defined LaTeX macros: find their definitions and expand them inline.

Handles ``\\newcommand``, ``\\renewcommand``, ``\\providecommand`` (starred
or not, name in braces or bare, ``[n]`` arguments and an ``[default]`` for
an optional first argument), ``\\DeclareMathOperator`` (expanded to
``\\operatorname{..}``) and ``\\def\\name#1#2{..}`` with undelimited
parameters. A ``\\def`` with delimited parameters (``\\def\\a#1.{..}``) is
removed but not expanded. Expansion repeats until no macro is left, at most
`MAX_DEPTH` times, so a self-referencing macro cannot loop.
"""

from __future__ import annotations

import dataclasses
import re

MAX_DEPTH = 10
_DEFINER = re.compile(r"\\(newcommand|renewcommand|providecommand|DeclareMathOperator|def)\b\*?")
_NAME = re.compile(r"\\([A-Za-z@]+|.)")


@dataclasses.dataclass(frozen=True)
class Macro:
    """A macro's argument count, optional-argument default and body (``#1`` ... placeholders)."""

    nargs: int
    default: str | None
    body: str


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n":
        i += 1
    return i


def read_group(text: str, i: int, open_ch: str = "{", close_ch: str = "}") -> tuple[str, int] | None:
    """The content of the balanced group opening at ``text[i]`` and the index after it."""
    if i >= len(text) or text[i] != open_ch:
        return None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return text[i + 1:j], j + 1
        j += 1
    return None


def read_argument(text: str, i: int) -> tuple[str, int] | None:
    """One macro argument at `i`: a brace group, a control sequence or one character."""
    i = _skip_space(text, i)
    if i >= len(text):
        return None
    if text[i] == "{":
        return read_group(text, i)
    if text[i] == "\\":
        m = _NAME.match(text, i)
        return m.group(0), m.end()
    return text[i], i + 1


def _parse_definition(text: str, m: re.Match) -> tuple[str, Macro | None, int] | None:
    kind, i = m.group(1), _skip_space(text, m.end())
    if i < len(text) and text[i] == "{":  # \newcommand{\name}
        group = read_group(text, i)
        if group is None:
            return None
        name_m, i = _NAME.fullmatch(group[0].strip()), group[1]
    else:  # \newcommand\name
        name_m = _NAME.match(text, i)
        i = name_m.end() if name_m else i
    if not name_m:
        return None
    name, nargs, default = name_m.group(1), 0, None
    if kind == "def":
        params = re.match(r"(?:#\d)*", text[i:]).group(0)
        nargs, i = len(params) // 2, i + len(params)
        if i < len(text) and text[i] != "{":  # delimited parameters: remove, do not expand
            end = text.find("{", i)
            group = read_group(text, end) if end >= 0 else None
            return (name, None, group[1]) if group else None
    else:
        i = _skip_space(text, i)
        if text.startswith("[", i):
            group = read_group(text, i, "[", "]")
            if group is None:
                return None
            nargs, i = int(group[0].strip() or 0), _skip_space(text, group[1])
            if text.startswith("[", i):
                group = read_group(text, i, "[", "]")
                if group is None:
                    return None
                default, i = group
        i = _skip_space(text, i)
    body = read_group(text, i)
    if body is None:
        return None
    content = body[0]
    if kind == "DeclareMathOperator":
        content = "\\operatorname{" + content + "}"
    return name, Macro(nargs, default, content), body[1]


def extract_macros(text: str) -> tuple[str, dict[str, Macro]]:
    """`text` with its macro definitions removed, and the macros by name (last one wins)."""
    macros: dict[str, Macro] = {}
    out, pos = [], 0
    for m in _DEFINER.finditer(text):
        if m.start() < pos:
            continue
        parsed = _parse_definition(text, m)
        if parsed is None:
            continue
        name, macro, end = parsed
        if macro is not None:
            macros[name] = macro
        out.append(text[pos:m.start()])
        pos = end
    out.append(text[pos:])
    return "".join(out), macros


def _expand_once(text: str, macros: dict[str, Macro]) -> str:
    names = "|".join(re.escape(n) for n in sorted(macros, key=len, reverse=True))
    pattern = re.compile(r"\\(" + names + r")(?![A-Za-z@])")
    out, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() < pos:
            continue
        macro, i, args = macros[m.group(1)], m.end(), []
        needed = macro.nargs
        if macro.default is not None:
            j = _skip_space(text, i)
            group = read_group(text, j, "[", "]") if text.startswith("[", j) else None
            args.append(group[0] if group else macro.default)
            i = group[1] if group else i
            needed -= 1
        for _ in range(needed):
            arg = read_argument(text, i)
            if arg is None:
                break
            args.append(arg[0])
            i = arg[1]
        body = macro.body
        for k, arg in enumerate(args, start=1):
            if arg[:1].isalpha() or arg[:1] == "@":
                # `\cmd#1` must stay two tokens (TeX skips the space it gets).
                body = re.sub(r"(\\[A-Za-z@]+)#" + str(k), r"\1 #" + str(k), body)
            body = body.replace(f"#{k}", arg)
        out.append(text[pos:m.start()] + body)
        pos = i
    out.append(text[pos:])
    return "".join(out)


def expand_macros(text: str, macros: dict[str, Macro]) -> str:
    """`text` with every use of `macros` replaced by its body, arguments substituted."""
    if not macros:
        return text
    # Bodies first, so a macro used inside another's body is expanded before
    # arguments are substituted next to it.
    for _ in range(MAX_DEPTH):
        bodies = {n: dataclasses.replace(m, body=_expand_once(m.body, macros)) for n, m in macros.items()}
        if bodies == macros:
            break
        macros = bodies
    for _ in range(MAX_DEPTH):
        new = _expand_once(text, macros)
        if new == text:
            break
        text = new
    return text
