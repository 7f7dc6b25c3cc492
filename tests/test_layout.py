"""The package's shape stays as designed: small modules and no import cycle (the layer direction itself is
checked by the import-linter contracts in pyproject.toml, run by `make lint`)."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoprune"
MAX_LINES = 400


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_at_most_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    """Every import counts, including the deferred ones inside functions."""
    import grimp

    g = grimp.build_graph("autoprune")
    modules = {m for m in g.modules if m.startswith("autoprune")}
    graph = {m: {d for d in g.find_modules_directly_imported_by(m) if d in modules} for m in modules}
    # a package's __init__ re-exporting its modules is not a cycle of concepts
    graph = {m: {d for d in deps if not (m.startswith(d + ".") or d.startswith(m + "."))} for m, deps in graph.items()}
    assert _cycles(graph) == []


ATTR_OWNERS = {"model/records.py", "search/storage/study.py"}  # optuna's model of one attribute-JSON owner


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_records_and_study_touch_optuna_user_attributes(path):
    """Every key of what a study stores in Optuna's user attributes is known to model/records.py alone (and
    search/storage/study.py, the storage's owner); the rest of the package goes through its accessors."""
    if str(path.relative_to(PACKAGE)) in ATTR_OWNERS:
        return
    import re

    text = path.read_text()  # enqueue_trial(..., user_attrs=records.xxx(...)) hands records' own dict over: fine
    assert not re.findall(r"\.user_attrs\b|set_user_attr\(|user_attrs=(?!records\.)", text)
