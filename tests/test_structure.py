"""The package's shape, checked from its source: no import cycles among onnxprune modules, no
private name reached across modules, no function longer than 80 lines.

Every import counts, those inside functions too: a lazy import still ties two modules together.
"""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "onnxprune")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, str]:
    """Dotted module name -> path, for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if MODULES[module].endswith("__init__.py") else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def imports(module: str):
    """(imported module, names taken from it, line) for every onnxprune import in `module`."""
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "onnxprune":
                    yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if base.split(".")[0] != "onnxprune":
                continue
            names = []
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", (), node.lineno
                else:
                    names.append(alias.name)
            if names:
                yield base, tuple(names), node.lineno


def test_the_walk_sees_the_package():
    assert "onnxprune.pipeline" in MODULES and "onnxprune.analysis.graph" in MODULES
    assert ("onnxprune.analysis.graph", ("GraphIndex",)) in {(m, n) for m, n, _ in imports("onnxprune.analysis.groups")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `edges` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    edges = {m: {target for target, _, _ in imports(m) if target in MODULES and target != m} for m in MODULES}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_names_across_modules():
    crossings = []
    for module in MODULES:
        aliases = {}
        for target, names, line in imports(module):
            crossings += [f"{module}:{line} imports {target}.{n}" for n in names if _private(n)]
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.ImportFrom) and _base(module, node).split(".")[0] == "onnxprune":
                base = _base(module, node)
                aliases.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names
                                if f"{base}.{a.name}" in MODULES})
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = aliases.get(node.value.id)
                if target and target != module:
                    crossings.append(f"{module}:{node.lineno} reads {target}.{node.attr}")
    assert not crossings, "\n".join(crossings)


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'module.function (N lines)' for every function or method longer than `limit` lines."""
    found = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{module}.{node.name} ({length} lines)")
    return found


def test_length_check_measures_functions():
    assert long_functions(limit=1), "every module has functions longer than one line"


# functions still over the limit: this list may only shrink (a new long function, or one listed
# here that got short without leaving the list, fails the test)
KNOWN_LONG: set[str] = set()


def test_no_function_over_80_lines():
    too_long = {entry.split(" (")[0] for entry in long_functions()}
    assert not too_long - KNOWN_LONG, "over 80 lines:\n" + "\n".join(sorted(too_long - KNOWN_LONG))
    assert not KNOWN_LONG - too_long, "now short, remove from KNOWN_LONG: " + ", ".join(sorted(KNOWN_LONG - too_long))
