"""The code layout the runtime is held to: rooms, no import loops, no oversized module.

Import loops are found on the module graph built from every import statement (a function-level
import counts: a factory that imports its plugins lazily from a base module the plugins import
is still a loop, and the order it works in is an accident).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level folder -> the package it installs as
PACKAGES = {"runtime": "skyloc.runtime", "skyloc": "skyloc", "synth": "skyloc.synth",
            "training": "skyloc.training", "export": "skyloc.export",
            "calibration": "skyloc.calibration", "benchmarks": "skyloc.benchmarks"}
MAX_LINES = 350
ENTRY_MODULES: set[str] = set()  # .py files allowed directly in runtime/ besides __init__.py


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0:1] = PACKAGES[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _sources()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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


def test_cycle_finder_sees_a_planted_loop() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loops() -> None:
    graph = import_graph()
    assert "skyloc.runtime.run.loop" in graph and "skyloc.core.errors" in graph
    cycles = find_cycles(graph)
    assert cycles == [], "import loops: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_runtime_is_rooms() -> None:
    loose = sorted(p.name for p in (ROOT / "runtime").glob("*.py") if p.name != "__init__.py")
    assert set(loose) <= ENTRY_MODULES, f"modules directly in runtime/: {loose}"
    rooms = sorted(p.name for p in (ROOT / "runtime").iterdir() if (p / "__init__.py").is_file())
    assert {"sources", "pose", "maps", "localize", "register", "outputs", "report", "backends", "run"} <= set(rooms)


def test_no_oversized_module() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _sources().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"
