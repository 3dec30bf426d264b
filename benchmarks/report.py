"""Common results writer for every benchmark: CSV + markdown table + PNG plot.

Every markdown starts with the machine it ran on and the exact command, then says plainly per
goal whether it was met, with the measured ratio. Torch-free; matplotlib is imported only when a
plot is written (the runtime install may not have it: then the PNG is skipped and the markdown
says so).
"""
from __future__ import annotations

import csv
import datetime as _dt
import importlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from skyloc.core.atomic import atomic_open, atomic_path, write_text_atomic



def _is_checkout(root: Path) -> bool:
    py = root / "pyproject.toml"
    try:
        return (root / "benchmarks" / "__init__.py").is_file() and py.is_file() \
            and 'name = "skyloc"' in py.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def default_results_dir(cwd: str | os.PathLike | None = None) -> Path:
    """benchmarks/results of a skyloc checkout: the one this code runs from (source tree or
    editable install), else the current folder when it is one. Never site-packages: an installed
    package has no checkout, and then the caller must say where (--results-dir)."""
    from skyloc.core.errors import SkylocError

    here = Path(__file__).resolve().parent
    for root in (here.parent, Path(cwd or os.getcwd()).resolve()):
        if _is_checkout(root):
            return root / "benchmarks" / "results"
    raise SkylocError("benchmark results: skyloc is installed as a package and the current folder is not a "
                      "skyloc checkout; pass --results-dir DIR (or run from a checkout, which uses "
                      "./benchmarks/results)")
_LIBRARIES = ("numpy", "onnxruntime", "faiss", "cv2", "torch", "torchvision", "tensorrt", "onnx")


@dataclass
class Goal:
    """One target of the issue, checked against a number measured in this run.

    `met` is None when the run could not measure it (the `why` then says what was missing)."""

    name: str
    target: str
    measured: str
    met: bool | None
    why: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]


def percentiles_ms(times_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds of a list of durations in nanoseconds."""
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    if t.size == 0:
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan, "mean_ms": math.nan}
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(t.mean())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    """The SIMD features INT8 / FP16 speed depends on (AVX2, AVX-512 VNNI...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
                return " ".join(f for f in wanted if f in have)
    except OSError:
        pass
    return ""


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ["nvidia-smi present but failed"]
    return [line.strip() for line in out.splitlines() if line.strip()]


def _version(module: str) -> str | None:
    """Version of an installed library; torch is only reported if already imported or
    importable without importing it here (we must not load torch for a runtime benchmark)."""
    if module in ("torch", "torchvision") and module not in sys.modules:
        try:
            from importlib.metadata import version

            return version(module) + " (installed, not loaded)"
        except Exception:
            return None
    if module == "tensorrt" and module not in sys.modules:
        try:
            from importlib.metadata import version

            return version(module)
        except Exception:
            return None
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "?"))


def machine_info() -> dict[str, Any]:
    import psutil

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": _gpus() or ["none"],
    }
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except Exception:
        pass
    info["libraries"] = {m: v for m in _LIBRARIES if (v := _version(m))}
    info["load_average"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []
    return info


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that produced the results, re-runnable from the repo root."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "skyloc"
    # `skyloc ...` and `python -m runtime.cli ...` are the same command.
    if prog in ("cli.py", "__main__.py"):
        prog = "skyloc"
    return " ".join(shlex.quote(a) for a in [prog, *argv[1:]])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return path


def columns_of(rows: Sequence[dict[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """`first` (those present), then every other key in first-seen order."""
    seen = [c for c in first if any(c in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in seen:
                seen.append(k)
    return seen


PlotFn = Callable[[Any], None]  # receives a matplotlib Figure


def write_plot(path: Path, plot: PlotFn) -> Path | None:
    """Render `plot(fig)` to a PNG with the Agg backend; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = plt.figure(figsize=(10, 6), dpi=100)
    try:
        plot(fig)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:  # savefig picks the format from the suffix
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def _machine_md(info: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info.get("libraries", {}).items())
    lines = [
        f"- CPU: {info.get('cpu')} ({info.get('physical_cores')} physical / {info.get('logical_cores')} logical cores; "
        f"{info.get('cpu_flags') or 'no AVX2'})",
        f"- Memory: {info.get('memory_gb')} GB; GPU: {', '.join(info.get('gpus', ['none']))}",
        f"- OS: {info.get('os')}; Python {info.get('python')}",
        f"- Libraries: {libs}",
    ]
    if "onnxruntime_providers" in info:
        lines.append(f"- ONNX Runtime providers: {', '.join(info['onnxruntime_providers'])}")
    if info.get("load_average"):
        lines.append(f"- Load average at start (1/5/15 min): {info['load_average']}")
    return "\n".join(lines)


def goals_md(goals: Sequence[Goal]) -> str:
    out = ["| goal | target | measured | verdict | why |", "|---|---|---|---|---|"]
    for g in goals:
        out.append(f"| {g.name} | {g.target} | {g.measured} | **{g.verdict}** | {g.why} |")
    return "\n".join(out)


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    results_dir: str | os.PathLike | None = None,
    *,
    title: str,
    columns: Sequence[str] | None = None,
    md_columns: Sequence[str] | None = None,
    goals: Sequence[Goal] = (),
    notes: Sequence[str] = (),
    plot: PlotFn | None = None,
    extra_tables: Sequence[tuple[str, str, Sequence[dict[str, Any]], Sequence[str]]] = (),
    command: str | None = None,
    machine: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write `<results_dir>/<name>.csv`, `.md` and (if `plot`) `.png`; return their paths.

    The CSV holds every column of every row; the markdown shows `md_columns` (default: all),
    preceded by the machine, the command, and the goal verdicts; `extra_tables` (heading, slug,
    rows, columns) are appended to the markdown and written as `<name>-<slug>.csv`."""
    out_dir = Path(results_dir) if results_dir else default_results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(columns or columns_of(rows))
    paths = {"csv": write_csv(out_dir / f"{name}.csv", rows, columns)}
    png = write_plot(out_dir / f"{name}.png", plot) if plot is not None and rows else None
    machine = machine or machine_info()
    md = [
        f"# {title}",
        "",
        f"Generated {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by:",
        "",
        "```",
        command or command_line(),
        "```",
        "",
        "## Machine",
        "",
        _machine_md(machine),
        "",
    ]
    if goals:
        md += ["## Goals", "", goals_md(goals), ""]
    md += ["## Results", "", markdown_table(rows, md_columns or columns), ""]
    for heading, slug, trows, tcols in extra_tables:
        md += [f"## {heading}", "", markdown_table(trows, tcols), ""]
        paths[f"{slug}_csv"] = write_csv(out_dir / f"{name}-{slug}.csv", trows, tcols)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if png is not None:
        md += [f"![{name}]({png.name})", ""]
        paths["png"] = png
    elif plot is not None:
        md += ["(No plot: matplotlib is not installed; `pip install skyloc[bench]`.)", ""]
    md_path = out_dir / f"{name}.md"
    write_text_atomic(md_path, "\n".join(md))
    paths["md"] = md_path
    return paths
