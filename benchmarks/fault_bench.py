"""`skyloc bench faults`: every fault case of fault_cases.py run in its own copy of the world, classified, written."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from skyloc.benchmarks.faults import (
    VERDICTS,
    Outcome,
    World,
    available,
    classify,
    execute,
)


def bench_faults(work_dir: str | os.PathLike | None = None, groups: Sequence[str] | None = None,
                 results_dir: str | os.PathLike | None = None, name: str = "faults", command: str | None = None,
                 progress: bool = True) -> dict[str, Path]:
    """Run every case (subprocess per case) and write <name>.md / .csv with counts per verdict."""
    import tempfile

    from skyloc.benchmarks.fault_cases import CASES, build_world
    from skyloc.benchmarks.report import write_results

    tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-faults-") if work_dir is None else None
    work = Path(tmp.name if tmp else work_dir)
    try:
        base = build_world(work / "base")
        rows = []
        for i, case in enumerate(c for c in CASES if not groups or c.group in groups):
            if not available(case.needs):
                rows.append({"group": case.group, "case": case.name, "expected": case.expect,
                             "verdict": "not run", "detail": f"needs {case.needs}", "seconds": 0.0})
                continue
            cdir = work / f"case-{i:02d}"
            repro = reproduction(case, World(cdir / "world"))
            try:
                res, lost = execute(case, base, cdir, inprocess=False)
                verdict, why = classify(case, World(cdir / "world"), res, lost)
            except Exception as exc:  # noqa: BLE001 - a bug of this harness, not of skyloc: not counted
                res, verdict, why = Outcome(-1), "not run", f"harness error: {type(exc).__name__}: {exc}"
            if case.known_bug and verdict not in ("clear error", "survived and counted"):
                why = f"{why} [open bug: {case.known_bug}]"
            rows.append({"group": case.group, "case": case.name, "expected": case.expect, "verdict": verdict,
                         "detail": why.replace("\n", " "), "seconds": round(res.seconds, 2),
                         "reproduce": repro})
            if progress:
                print(f"[{verdict:>20}] {case.group}/{case.name}: {why[:100]}", file=sys.stderr)
            shutil.rmtree(cdir, ignore_errors=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    counts = [{"verdict": v, "cases": sum(r["verdict"] == v for r in rows)} for v in VERDICTS]
    counts.append({"verdict": "not run", "cases": sum(r["verdict"] == "not run" for r in rows)})
    by_group = []
    for g in dict.fromkeys(r["group"] for r in rows):
        row: dict[str, Any] = {"group": g}
        row.update({v: sum(r["verdict"] == v and r["group"] == g for r in rows) for v in VERDICTS})
        by_group.append(row)
    notes = [
        "Goal: zero wrong, zero crash, zero data loss; every fault a clear error or survived and counted "
        "('survived, not counted' is safe but misses the goal's 'clear error or counted skip').",
        "A case marked [open bug: ...] exposes a bug in a file this benchmark does not own; tests/test_faults.py "
        "xfails it on exactly that verdict and fails once it is fixed (remove the mark then).",
        "Each case runs `python -m skyloc ...` on its own copy of a tiny world (2-layer ONNX model, 480 x 400 m "
        "synthetic map, tile set, 6 frames); the verdict is what the process did, classified by benchmarks/faults.py.",
        "`reproduce`: the command, with WORLD = a copy of the tiny world (`python -c 'from skyloc.benchmarks."
        "fault_cases import build_world; build_world(\"WORLD\")'`), after the fault the case's prepare step "
        "injects (named first); custom runners are described by what they do (benchmarks/fault_*.py).",
        "`expected` is the outcome the case asks for; a verdict of 'clear error' where 'survived' was expected "
        "(or the reverse) is still a safe outcome and counted as such.",
    ]
    return write_results(
        name, rows, results_dir, title="Fault-injection matrix",
        columns=["group", "case", "expected", "verdict", "detail", "seconds", "reproduce"],
        extra_tables=[("Counts per verdict", "counts", counts, ["verdict", "cases"]),
                      ("Counts per group", "groups", by_group, ["group", *VERDICTS])],
        notes=notes, command=command,
    )


def _doc(fn: Any) -> str:
    """First docstring line of a prepare / runner; for a closure made by a factory, the factory's."""
    import importlib

    qual = getattr(fn, "__qualname__", "") or ""
    outer = qual.split(".<locals>")[0] if ".<locals>" in qual else ""
    if outer and not outer.startswith("<"):
        fn = getattr(importlib.import_module(fn.__module__), outer, fn)
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    name = getattr(fn, "__name__", "")
    if name == "<lambda>":
        return "an inline step (fault_cases.py)"
    return f"{name}: {doc[0]}" if doc else name


def reproduction(case: Any, w: World) -> str:
    """How to reproduce a case by hand: its prepare step, then the command line (WORLD = the world copy)."""
    pre = f"prepare: {_doc(case.prepare)}; " if case.prepare is not None else ""
    if case.argv is not None and case.runner is None or case.argv is not None and case.group == "sweep":
        try:
            argv = [a.replace(str(w.root), "WORLD") for a in case.argv(w)]
        except Exception:  # noqa: BLE001 - argv builders that read prepared files
            argv = []
        if argv:
            return pre + "skyloc " + " ".join(shlex.quote(a) for a in argv)
    return pre + "runner: " + _doc(case.runner)
