"""No code path deserialises with pickle: every `torch.load` passes `weights_only=True`, no
`pickle`/`dill`/`cloudpickle` load and no `np.load(allow_pickle=True)` (scanned from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("platform/dreamray", "evals", "pipelines", "benchmarks")
PICKLE_MODULES = {"pickle", "dill", "cloudpickle", "joblib"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """`line: call` for each deserialising call of `source` that can run pickled code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = getattr(node.func.value, "id", None)
        name = node.func.attr
        if owner == "torch" and name == "load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif owner in PICKLE_MODULES and name in ("load", "loads"):
            found.append(f"{node.lineno}: {owner}.{name}")
        elif owner == "np" and name == "load" and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{node.lineno}: np.load(allow_pickle=True)")
    return found


def test_the_scan_finds_each_unsafe_load():
    source = (
        "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
        "np.load(p, allow_pickle=True)\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    )
    assert [line.split(":")[0] for line in unsafe_calls(source)] == ["1", "2", "3", "4"]


def test_the_code_never_loads_pickles():
    offenders = {
        str(path.relative_to(REPO)): calls
        for folder in SCANNED
        for path in sorted((REPO / folder).rglob("*.py"))
        if (calls := unsafe_calls(path.read_text()))
    }
    assert offenders == {}
