"""MATH answers: ``\\boxed{}`` extraction and Minerva's answer normalisation.

Reproduced from lm-evaluation-harness 0.4.13, ``lm_eval/tasks/minerva_math/utils.py``
(which takes them from wellecks/lm-evaluation-harness ``minerva_math.py``):
`last_boxed_only_string`, `remove_boxed`, `get_unnormalized_answer`,
`normalize_final_answer` (Lewkowycz et al. 2022, "Solving Quantitative
Reasoning Problems with Language Models", Appendix D, with lm-eval's fixes:
unit words removed at word boundaries so ``\\left`` keeps its "ft", indexed
roots kept intact, commas removed only as thousands separators) and
`is_equiv`. The tests check these against lm-eval's own source.

Differences, both only where lm-eval would crash or misreport:

* `remove_boxed` returns None for a string that is not a ``\\boxed{...}``
  (lm-eval asserts);
* `is_equiv` compares with sympy's ``parse_latex`` only when sympy and the
  ANTLR 4.11 runtime it needs are installed (lm-eval refuses to import
  without them); otherwise equal normalised strings are equal answers and
  nothing else is. `SYMPY_EQUIVALENCE` says which is in force; the report
  records it.
"""

from __future__ import annotations

import re
import signal
import threading

try:  # sympy's LaTeX parser needs the ANTLR runtime (pip install antlr4-python3-runtime==4.11)
    import antlr4  # noqa: F401
    import sympy
    from sympy.parsing.latex import parse_latex
    SYMPY_EQUIVALENCE = True
except ImportError:
    sympy = None
    parse_latex = None
    SYMPY_EQUIVALENCE = False

INVALID_ANSWER = "[invalidanswer]"

SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
]


def last_boxed_only_string(string: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) of `string`, braces balanced
    (nested braces kept: ``\\boxed{\\frac{1}{2}}``); ``\\boxed 5`` up to the next $."""
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(string)):
        if string[i] == "{":
            depth += 1
        elif string[i] == "}":
            depth -= 1
            if depth == 0:
                return string[idx:i + 1]
    return None


def remove_boxed(s: str | None) -> str | None:
    """The content of ``\\boxed{content}`` / ``\\boxed content``, or None."""
    if s is None:
        return None
    if "\\boxed " in s:
        return s[len("\\boxed "):] if s.startswith("\\boxed ") else None
    left = "\\boxed{"
    if not (s.startswith(left) and s.endswith("}")):
        return None
    return s[len(left):-1]


def boxed_answer(solution: str) -> str | None:
    """The normalised answer of a MATH reference solution (its last ``\\boxed{}``)."""
    content = remove_boxed(last_boxed_only_string(solution))
    return None if content is None else normalize_final_answer(content)


def get_unnormalized_answer(text: str) -> str:
    """X of Minerva's "Final Answer: The final answer is X. I hope it is correct."
    in a generation (the ending may be cut off by the stop sequence), else
    ``[invalidanswer]``."""
    text += "I hope it is correct."
    match = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", text)
    return match.group(1).strip() if match else INVALID_ANSWER


def normalize_final_answer(final_answer: str) -> str:
    """Minerva's normalisation of a final answer (Lewkowycz et al. 2022, Appendix D,
    as lm-eval 0.4.13 applies it)."""
    final_answer = final_answer.split("=")[-1]
    # Unit words while whitespace still delimits them ("2\pi cm" loses "cm", "\left" keeps "ft").
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            final_answer = re.sub(rf"(?<!\\)\b{expr}\b", "", final_answer)
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            # Units glued on once whitespace is gone; LaTeX command names are skipped.
            segments = re.split(r"(\\[a-zA-Z]+)", final_answer)
            for i in range(0, len(segments), 2):
                segments[i] = segments[i].replace(expr, "")
            final_answer = "".join(segments)
        else:
            final_answer = final_answer.replace(expr, "")
    # The answer inside $...$, \text{}, \textbf{}, \overline{}, \boxed{}.
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    # Shorthand TeX: \fracab -> \frac{a}{b}, \sqrt[3]a -> \sqrt[3]{a}, \sqrta -> \sqrt{a}.
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    # 100,000 -> 100000, but a tuple "0,1" stays.
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer


class _Timeout:
    """SIGALRM after `seconds` (main thread only; elsewhere no limit)."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        self.active = threading.current_thread() is threading.main_thread()

    def _raise(self, signum, frame):
        raise TimeoutError("sympy comparison timed out")

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._raise)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.active:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.previous)


def is_equiv(x1: str | None, x2: str | None) -> bool:
    """Whether two normalised answers are equal: the same string, or (with sympy
    and ANTLR installed) LaTeX expressions whose difference simplifies to 0
    (5 s limit, as lm-eval)."""
    if not isinstance(x1, str) or not isinstance(x2, str) or x1 == INVALID_ANSWER:
        return False
    if x1 and x1 == x2:
        return True
    if not SYMPY_EQUIVALENCE:
        return False
    try:
        with _Timeout(5):
            return sympy.simplify(parse_latex(x1) - parse_latex(x2)) == 0
    except Exception:  # noqa: BLE001 - lm-eval treats every parse/simplify failure as "not equal"
        return False
