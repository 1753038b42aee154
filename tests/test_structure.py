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


# ---------------------------------------------------------------- op knowledge lives on the rules

OPS_MODULE = "onnxprune.analysis.ops"

# Comparisons of op_type with an op the rule table knows that stay outside analysis/ops.py, by
# module. Each asks something other than how channels flow through the op, so the rule is not
# the place for it (the same list, with reasons, is in the docstring of analysis/ops.py):
ALLOWED_OP_COMPARISONS = {
    # constant folding never folds Dropout (random in training mode) along with the sampling ops
    "onnxprune.analysis.fold": {"Dropout"},
    # Identity chains are skipped when looking for constants and their producers (graph plumbing)
    "onnxprune.analysis.graph": {"Identity", "Clip", "Max", "Min", "Less", "Greater", "LessOrEqual",
                                 "GreaterOrEqual", "Equal", "Pad", "IsInf", "IsNaN"},  # INF_OK: ops whose constants may be inf
    # the shape-subgraph evaluator follows the values of Shape/Gather/Concat/arithmetic on shape vectors
    "onnxprune.analysis.shapes": {"Abs", "Add", "Cast", "Ceil", "Clip", "Concat", "Div", "Expand", "Floor", "Gather",
                                  "Identity", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Reshape", "Resize",
                                  "Shape", "Slice", "Squeeze", "Sub", "Transpose", "Unsqueeze"},
    # the rewrite looks through a Cast/Identity (shapes.PASS_THROUGH) for a shape constant's producer
    "onnxprune.rewrite": {"Cast", "Identity"},
    # onnx2torch maps Gemm to torch.nn.Linear; Identity of a constant is folded before conversion
    "onnxprune.finetuning.bridge": {"Gemm", "Identity"},
    # the moment propagation computes each activation function and the sums/pass-throughs it follows
    "onnxprune.recovery.datafree": {"Add", "AveragePool", "Clip", "Dropout", "Elu", "Flatten", "Gelu",
                                    "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity",
                                    "LeakyRelu", "MaxPool", "Mish", "PRelu", "Pad", "Relu", "Resize", "Selu",
                                    "Sigmoid", "Softplus", "Softsign", "Sum", "Tanh", "Upsample"},
    # graph outputs made by a Concat are scored per part (the detection heads of a detector)
    "onnxprune.verification.evaluate": {"Concat"},
    # ops whose outputs depend on the values, not only the shapes, of their inputs (verify's warning)
    "onnxprune.verification.verify": {"Expand", "Tile"},
}


def _strings(node, consts) -> set[str]:
    """The strings an operand spells: a literal, a tuple/list/set/dict (keys) of them, a call on
    one (frozenset({...})), or a name bound to one at module level or imported."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
        elts = node.keys if isinstance(node, ast.Dict) else node.elts
        return set().union(*[_strings(e, consts) for e in elts if e is not None])
    if isinstance(node, ast.Call) and node.args:
        return _strings(node.args[0], consts)
    if isinstance(node, ast.Name):
        return consts.get(node.id, set())
    return set()


def _module_constants(tree) -> dict[str, set[str]]:
    """Module-level names bound to a collection of strings."""
    consts = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            found = _strings(stmt.value, {})
            for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                if isinstance(t, ast.Name) and found:
                    consts[t.id] = found
    return consts


CONSTANTS = {name: _module_constants(tree) for name, tree in TREES.items()}


def op_type_strings(module: str, tree=None) -> dict[str, int]:
    """{op name: line} of every comparison of an ``op_type`` (or a local name bound to one) with a
    string in `module` (or in `tree`, parsed as that module)."""
    tree = tree or TREES[module]
    consts = dict(CONSTANTS.get(module) or _module_constants(tree))
    if module in MODULES:
        for base, names, _ in imports(module):
            consts.update({n: CONSTANTS[base][n] for n in names if n in CONSTANTS.get(base, {})})
    aliases = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Attribute)
               and n.value.attr == "op_type" for t in n.targets if isinstance(t, ast.Name)}

    def is_op(e):
        return (isinstance(e, ast.Attribute) and e.attr == "op_type") or (isinstance(e, ast.Name) and e.id in aliases)

    found = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare) and any(is_op(e) for e in [n.left, *n.comparators]):
            for e in [n.left, *n.comparators]:
                for s in _strings(e, consts):
                    found.setdefault(s, n.lineno)
    return found


def test_op_comparison_finder_sees_every_form():
    src = ("KNOWN = {'Relu', 'Tanh'}\n"
           "def f(node, other):\n"
           "    op = other.op_type\n"
           "    return (node.op_type == 'Conv', node.op_type in ('Gemm', 'MatMul'), op != 'Concat',\n"
           "            node.op_type not in KNOWN, node.op_type == other.name)\n")
    assert set(op_type_strings("example", ast.parse(src))) == {"Conv", "Gemm", "MatMul", "Concat", "Relu", "Tanh"}
    assert "Cast" in op_type_strings("onnxprune.rewrite")        # a set imported from another module


def test_only_the_rules_compare_op_types_of_table_ops():
    """What modules ask of an op the rule table knows (filter layout, BatchNormalization, MACs...)
    is a property of its rule: no module outside analysis/ops.py names such an op in an op_type
    comparison, beyond the commented allow-list above (which must not go stale)."""
    from onnxprune.analysis.ops import RULES

    found = {}
    for module in MODULES:
        if module != OPS_MODULE:
            hits = {op: line for op, line in op_type_strings(module).items() if op in RULES}
            if hits:
                found[module] = hits
    unexpected = [f"{m}:{line} compares op_type with '{op}'" for m, hits in sorted(found.items())
                  for op, line in sorted(hits.items()) if op not in ALLOWED_OP_COMPARISONS.get(m, set())]
    assert not unexpected, "ask the op's rule (analysis/ops.py) instead:\n" + "\n".join(unexpected)
    stale = [f"{m}: {op}" for m, ops in sorted(ALLOWED_OP_COMPARISONS.items())
             for op in sorted(ops) if op not in found.get(m, {})]
    assert not stale, "allow-listed comparisons no longer made: " + ", ".join(stale)
