"""The package's shape: imports run one way (no circles), no private name crosses a module, and
modules and functions stay small enough to read (about 500 and 80 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clarity"
MAX_MODULE_LINES = 550      # "about 500"
MAX_FUNCTION_BODY = 90      # "about 80"
MAX_PUBLIC_PARAMS = 11      # "about 10": pass a config instead


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(target module, imported name, line) of every clarity import of a module, top level or not."""
    tree = ast.parse(path.read_text())
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "clarity":
                for al in node.names:
                    yield target, al.name, node.lineno
        elif isinstance(node, ast.Import):
            for al in node.names:
                if al.name.split(".")[0] == "clarity":
                    yield al.name, None, node.lineno


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for target, item, _ in _imports(name, path):
            full = f"{target}.{item}" if item else target
            mod = full if full in MODULES else target
            # importing a.b.c runs a and a.b first
            parts = mod.split(".")
            deps |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        # a module's own ancestors are already being imported when it runs: not an edge
        g[name] = {d for d in deps if d in MODULES and d != name and not name.startswith(d + ".")}
    return g


def test_no_import_circles():
    g = _graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_detect_never_imports_training_or_validation():
    g = _graph()
    for name, deps in g.items():
        if name.startswith("clarity.detect"):
            bad = {d for d in deps if d.split(".")[1] in ("validate", "review", "train", "sampling")}
            assert not bad, f"{name} imports {bad}"


def test_no_private_name_crosses_a_module():
    bad = [f"{path.relative_to(ROOT.parent)}:{line} imports {target}.{item}"
           for name, path in MODULES.items() for target, item, line in _imports(name, path)
           if item and item.startswith("_") and not item.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name):
    path = MODULES[name]
    src = path.read_text()
    n = len(src.splitlines())
    assert n <= MAX_MODULE_LINES, f"{path}: {n} lines"
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                                and isinstance(body[0].value, ast.Constant)) else body[0]
            length = node.end_lineno - first.lineno + 1
            assert length <= MAX_FUNCTION_BODY, f"{path}:{node.lineno} {node.name}: body of {length} lines"
            a = node.args
            params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
            params -= bool(a.args and a.args[0].arg in ("self", "cls"))
            if not node.name.startswith("_"):
                assert params <= MAX_PUBLIC_PARAMS, f"{path}:{node.lineno} {node.name}: {params} parameters"
