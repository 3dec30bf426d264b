"""The numeric-flag sweep of `skyloc bench faults`: every numeric flag of every command (every
subcommand of synth, export and bench too) given NaN,
+inf, -inf and (where the flag takes no negative value) a negative number. Each must be refused
with exit 2 and the flag's name, before anything is written (the case's output folder must not
appear). The flags are read from the commands' own parsers, so a flag added without the one
validator (core.options: `opt(...)` fields, `number(...)` argparse types) shows up as "wrong"."""
from __future__ import annotations

import argparse
import importlib
import re
from typing import Callable, Iterator

from skyloc.benchmarks.faults import Case, Outcome, World, run_cli

# command -> (argv prefix builder, needs): the least a command needs to reach its flag checks
COMMANDS: dict[str, tuple[Callable[[World], list[str]], str]] = {
    "run": (lambda w: w.run_argv(out=w.root / "sweep-out"), ""),
    "tiles": (lambda w: w.tiles_argv(out=w.root / "sweep-out"), ""),
    "synth world": (lambda w: ["synth", "world", "--out", str(w.root / "sweep-out")], ""),
    "synth dataset": (lambda w: ["synth", "dataset", "--out", str(w.root / "sweep-out")], ""),
    "synth flight": (lambda w: ["synth", "flight", "--out", str(w.root / "sweep-out")], ""),
    "calibrate": (lambda w: ["calibrate", "--model", str(w.model), "--images", str(w.calib), "--out",
                             str(w.root / "sweep-out"), "--no-progress"], ""),
    "train": (lambda w: ["train", "--data", str(w.root / "no-data"), "--out", str(w.root / "sweep-out")], "torch"),
    "export matcher": (lambda w: ["export", "matcher", "--out", str(w.root / "sweep-out")], ""),
}
# every other command: the flag alone (argparse / the options check refuse it before anything runs)
for _cmd in ("eval", "export onnx", "engine", "doctor", "demo", *(f"bench {b}" for b in (
        "latency", "search", "accuracy", "runtime", "learned-gate", "flight", "flight-latency", "faults", "soak"))):
    COMMANDS[_cmd] = (lambda w, _cmd=_cmd: _cmd.split(), "")
MODULES = {"run": "skyloc.runtime.run.cli", "tiles": "skyloc.runtime.maps.tiles_cli", "synth": "skyloc.synth.cli",
           "calibrate": "skyloc.calibration.cli", "train": "skyloc.training.train_cli",
           "eval": "skyloc.training.eval_cli", "export": "skyloc.export.cli", "engine": "skyloc.export.engine_cli",
           "doctor": "skyloc.benchmarks.gpu_check", "demo": "skyloc.pipelines.demo", "bench": "skyloc.benchmarks.cli"}
SKIP_DESTS = {"log_level"}


def _numeric(action: argparse.Action) -> tuple[str, float | None] | None:
    """(int | float, lower bound or None) for a numeric option, else None."""
    conv = getattr(action, "_convert", None)  # core.options add_options: convert(text, opt, kind, tp, optional, f)
    if conv is not None and conv.__defaults__:
        kind, tp, _, f = conv.__defaults__
        if tp in (int, float):
            lo = [f.metadata.get(k) for k in ("ge", "gt") if f.metadata.get(k) is not None]
            return tp.__name__, (max(lo) if lo else None)
        return None
    t = action.type
    if t in (int, float):
        return t.__name__, None
    if callable(t) and getattr(t, "__name__", "") in ("int", "float") and t.__closure__:
        cells = {n: c.cell_contents for n, c in zip(t.__code__.co_freevars, t.__closure__)}
        lo = [cells.get(k) for k in ("ge", "gt") if cells.get(k) is not None]
        return t.__name__, (max(lo) if lo else None)
    if callable(t) and getattr(t, "__name__", "") in ("_pair", "_range"):
        return "pair", None
    return None


def _parser(command: str) -> argparse.ArgumentParser:
    top, _, sub = command.partition(" ")
    p = argparse.ArgumentParser(prog=f"skyloc {top}")
    importlib.import_module(MODULES[top]).add_arguments(p)
    if sub:
        sp = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return sp.choices[sub]
    return p


def numeric_flags(command: str) -> list[tuple[str, str, float | None]]:
    """(flag, kind, lower bound) of every numeric option of `command`."""
    out = []
    try:
        p = _parser(command)
    except (ModuleNotFoundError, KeyError, StopIteration):  # a package this install lacks / no such subcommand
        return out
    for a in p._actions:
        if not a.option_strings or a.dest in SKIP_DESTS or a.choices:
            continue
        n = _numeric(a)
        if n is not None:
            out.append((a.option_strings[0], n[0], n[1]))
    return out


def _values(kind: str, lo: float | None) -> Iterator[str]:
    bad = ["nan", "inf", "-inf"]
    if kind == "pair":
        bad = ["nan,1", "1,inf", "-5,10"]
    elif lo is not None and lo >= 0:
        bad.append("-5")
    yield from bad


def judge_flag(flag: str, out_name: str = "sweep-out") -> Callable[[World, Outcome], tuple[str, str]]:
    """Exit 2 naming the flag, and nothing written; else wrong (or a crash, from classify)."""
    pattern = re.escape(flag) + "|" + re.escape(flag.lstrip("-").replace("-", "_"))

    def judge(w: World, res: Outcome) -> tuple[str, str]:
        wrote = (w.root / out_name).exists()
        if res.rc == 2 and re.search(pattern, res.err) and not wrote:
            return "clear error", [ln for ln in res.err.strip().splitlines() if ln.strip()][-1][:160]
        if wrote:
            return "wrong", f"exit {res.rc}, but {out_name} was written before (or despite) the check"
        if res.rc == 2:
            return "wrong", f"an error not naming {flag}: {res.err.strip()[-160:]}"
        return "wrong", f"exit {res.rc}: accepted"
    return judge


def sweep_cases() -> list[Case]:
    cases = []
    for command, (prefix, needs) in COMMANDS.items():
        for flag, kind, lo in numeric_flags(command):
            for value in _values(kind, lo):
                argv = (lambda w, prefix=prefix, flag=flag, value=value: prefix(w) + [flag, value])
                # in-process even in the benchmark (a flag check is what is tested, not process
                # start-up: 400+ interpreter starts would add ten minutes); "survived" so the judge,
                # not the generic exit-2 rule, decides: it also checks that nothing was written
                cases.append(Case(f"sweep: {command} {flag} {value}", "sweep", "survived", argv,
                                  judge=judge_flag(flag), needs=needs, suite=False,
                                  runner=lambda w, inprocess, argv=argv: run_cli(argv(w), True, w.root)))
    return cases
