"""The package's import graph, read from the source (nothing is imported): no import circles, and
the layers point one way (config -> model -> data/evals -> train -> orchestration)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "platform"
# The test-asset builders: production code reads layouts through `dreamray.model.layouts`.
ZOO_BUILDERS = {"dreamray.zoo", "dreamray.zoo_llm", "dreamray.zoo_real", "dreamray.world_zoo"}
LAYERS_WITHOUT_ZOO = ("config", "data", "evals", "train", "orchestration", "metrics")
# The memory planner sizes the real 7B towers from config-only dirs the zoo writes.
ZOO_ALLOWED = {"dreamray.model.memory"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (PACKAGE_ROOT / "dreamray").rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    # `if TYPE_CHECKING:` imports never run: they make no circle
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return skip


def _imported(module: str, node: ast.Import | ast.ImportFrom, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the dreamray modules it imports anywhere in its body (lazy imports included)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                graph[module] |= _imported(module, node, modules)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


def test_production_layers_never_import_the_zoo_builders():
    offenders = {
        module: sorted(deps & ZOO_BUILDERS)
        for module, deps in import_graph().items()
        if module.split(".")[1:2] and module.split(".")[1] in LAYERS_WITHOUT_ZOO
        and deps & ZOO_BUILDERS
        and module not in ZOO_ALLOWED
    }
    assert offenders == {}


def test_config_imports_nothing_of_the_model():
    offenders = {m: sorted(d) for m, d in import_graph().items()
                 if m.startswith("dreamray.config") and any(x.startswith("dreamray.model")
                                                            for x in d)}
    assert offenders == {}
