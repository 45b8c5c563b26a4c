"""The package is built in levels (docs/ARCHITECTURE.md): a module imports only from its own
level or below, and the imports between modules, function-level ones included, form no circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgetrunc"

LEVELS = {
    "edgetrunc._version": 0, "edgetrunc.errors": 0, "edgetrunc._io": 0, "edgetrunc._log": 0,
    "edgetrunc._commit": 0,
    "edgetrunc._options": 0,
    "edgetrunc._text": 0, "edgetrunc.metrics": 0, "edgetrunc.data": 0,
    "edgetrunc.runtime": 1,
    "edgetrunc.layers": 2, "edgetrunc.models": 2,
    "edgetrunc.elementwise": 2,
    "edgetrunc.keras": 3, "edgetrunc.legacy": 3,
    "edgetrunc.export": 4,
    "edgetrunc.parity": 5, "edgetrunc.migrate": 5,
    "edgetrunc.evaluate": 6, "edgetrunc.train": 6,
    "edgetrunc.testing": 6,
    "edgetrunc.cli": 7, "edgetrunc.__main__": 7,
    "edgetrunc": 8,  # the package root re-exports lazily; nothing below imports it
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def level_of(module: str) -> int:
    best = max((prefix for prefix in LEVELS if module == prefix or module.startswith(prefix + ".")),
               key=len)
    return LEVELS[best]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set:
    """Every edgetrunc module that `module` imports, anywhere in its body."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgetrunc")
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            if target.split(".")[0] != "edgetrunc":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(module)
    return {name for name in found if name in MODULES}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_level():
    assert all(level_of(m) is not None for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_its_level_or_below(module):
    upward = sorted(t for t in GRAPH[module] if level_of(t) > level_of(module))
    assert not upward, f"{module} (level {level_of(module)}) imports from above: {upward}"


def test_nothing_below_the_root_imports_the_package_root():
    offenders = sorted(m for m, targets in GRAPH.items() if m != "edgetrunc" and "edgetrunc" in targets)
    assert not offenders, f"import edgetrunc's submodules directly, not the root: {offenders}"


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    source = MODULES[module].read_text()
    assert source.count("\n") <= 400, f"{module}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{module}.{node.name}: {length} lines"
