"""The package's import graph: no cycles, and every llama_jax import at the top of its file.

Reads each module of `llama_jax/` with `ast` (nothing is imported), so the
test holds whatever the imports would do at run time. Module-level imports
are the edges; ``from llama_jax.pkg import name`` points at the submodule
``llama_jax.pkg.name`` when that is a module, else at ``llama_jax.pkg``.
Importing a submodule also runs its parent packages' ``__init__``; those
implicit edges are not counted (Python resolves them whatever the order).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llama_jax"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The llama_jax modules one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "llama_jax"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
            node.module.split(".")[0] == "llama_jax":
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names]
    return []


def _module_level(tree: ast.Module):
    """Statements that run at import time (the body, and if/try blocks in it)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                todo.extend(handler.body)


def _graph():
    modules = _modules()
    edges: dict[str, set[str]] = {}
    local: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, _module_level(tree)))
        edges[name] = set()
        for node in ast.walk(tree):
            targets = _targets(node, modules)
            if not targets:
                continue
            if id(node) in top:
                edges[name].update(t for t in targets if t != name)
            else:
                local.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                             f"{ast.unparse(node)}")
    return modules, edges, local


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_every_import_names_a_module_that_exists():
    modules, edges, _ = _graph()
    missing = sorted({f"{src} -> {dst}" for src, dsts in edges.items() for dst in dsts
                      if dst not in modules})
    assert not missing, missing


def test_no_import_cycles():
    _, edges, _ = _graph()
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_local_imports_of_llama_jax():
    _, _, local = _graph()
    assert not local, "llama_jax imports below module level (move them to the top):\n" + \
        "\n".join(local)


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these by job: {long}"
