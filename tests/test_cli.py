"""The `skyloc` dispatcher: help lists every command without importing torch."""
from __future__ import annotations

import subprocess
import sys

from skyloc.cli import COMMANDS


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_top_level_help_lists_commands_without_torch() -> None:
    out = _run(
        "import sys, contextlib, io\n"
        "from skyloc.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['--help'])\n"
        "print(buf.getvalue())\n"
        "print('RC', rc, 'TORCH', 'torch' in sys.modules)\n"
    )
    assert "RC 0 TORCH False" in out
    for name in COMMANDS:
        assert f"  {name} " in out


def test_unknown_command_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "skyloc", "fly"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown command" in proc.stderr


# ---- version, logging ------------------------------------------------------------------------

import ast  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import skyloc  # noqa: E402
from skyloc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("skyloc", "runtime", "training", "export", "calibration", "benchmarks")


def test_version_flag(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"skyloc {skyloc.__version__}"
    assert skyloc.__version__ != "0.0.0+unknown"  # the installed metadata was found


def test_log_file_and_level_before_or_after_the_command(tmp_path) -> None:
    from runtime_core_helpers import make_map, make_tiny_model

    model = make_tiny_model(tmp_path / "m.onnx")
    mp = make_map(tmp_path / "map", width_px=160, height_px=160)
    log1, log2 = tmp_path / "logs" / "a.log", tmp_path / "b.log"
    base = ["--model", str(model), "--map", str(mp), "--tile-m", "60", "--stride-m", "50", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "skyloc", "--log-level", "DEBUG", "--log-file", str(log1), "tiles",
                        *base, "--out", str(tmp_path / "t1.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = log1.read_text()
    # the backend's message, from its module's logger, with a timestamp; DEBUG lines pass too
    assert "INFO skyloc.runtime.backends." in text and "backend auto -> onnxruntime" in text
    assert text[:4].isdigit()  # "2026-..." asctime
    assert "skyloc.runtime.backends." in r.stderr  # and on stderr as well
    r = subprocess.run([sys.executable, "-m", "skyloc", "tiles", *base, "--out", str(tmp_path / "t2.npz"),
                        "--log-level", "WARNING", "--log-file", str(log2)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "backend auto" not in log2.read_text() and "backend auto" not in r.stderr  # INFO filtered out
    r = subprocess.run([sys.executable, "-m", "skyloc", "--log-file", str(tmp_path), "tiles", *base,
                        "--out", str(tmp_path / "t3.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--log-file" in r.stderr and not (tmp_path / "t3.npz").exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            yield node, name


def _logging_problems(rel: str, tree: ast.AST) -> list[str]:
    bad = []
    # A function that adds a handler and removes it again (a harness capturing messages) may do so.
    paired: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = {name for _, name in _calls(fn)}
            if {"addHandler", "removeHandler"} <= names:
                paired.update(id(n) for n, _ in _calls(fn))
    for node, name in _calls(tree):
        if rel == "skyloc/cli.py":
            continue
        if name == "getLogger":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Name) and arg.id == "__name__":
                continue
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("skyloc"):
                continue  # a third-party logger (torch.onnx, ...)
            if id(node) in paired and (arg is None or (isinstance(arg, ast.Constant) and arg.value == "skyloc")):
                continue
            bad.append(f"{rel}:{node.lineno} getLogger({ast.unparse(arg) if arg else ''})")
        elif name in ("basicConfig", "disable", "dictConfig", "fileConfig") or \
                (name == "addHandler" and id(node) not in paired):
            bad.append(f"{rel}:{node.lineno} logging.{name}(...)")
    return bad


def test_loggers_are_module_named_and_only_the_cli_configures_logging() -> None:
    """Every getLogger(...) in the sources is getLogger(__name__) (one skyloc.* hierarchy), and only
    skyloc/cli.py touches the root logger or installs handlers (a harness may capture and remove)."""
    bad = []
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad += _logging_problems(rel, ast.parse(path.read_text(), filename=rel))
    assert not bad, "use logging.getLogger(__name__) and leave handlers to skyloc/cli.py:\n" + "\n".join(bad)


def test_the_logging_check_catches_what_it_should() -> None:
    src = """
import logging
log = logging.getLogger("skyloc.odd")
def quiet():
    root = logging.getLogger()
    root.setLevel(logging.ERROR)
def setup():
    logging.basicConfig(level=logging.INFO)
def capture():
    h = logging.StreamHandler()
    logging.getLogger("skyloc").addHandler(h)
    logging.getLogger("skyloc").removeHandler(h)
def leak():
    logging.getLogger(__name__).addHandler(logging.NullHandler())
"""
    bad = _logging_problems("x.py", ast.parse(src))
    assert [b.split(" ", 1)[1] for b in bad] == ["getLogger('skyloc.odd')", "getLogger()", "logging.basicConfig(...)",
                                                  "logging.addHandler(...)"]


def test_library_calls_leave_the_root_logger_alone(tmp_path) -> None:
    """Build a tile set, run the loop, make a report (and calibrate, with onnx's quantizer): the
    root logger's level and handlers are what they were, and every skyloc logger is a module's."""
    code = f"""
import json, logging, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from pathlib import Path
from runtime_core_helpers import make_map, make_tiny_model
root = logging.getLogger()
root.setLevel(logging.INFO)
before = (root.level, list(root.handlers), logging.root.manager.disable)
tmp = Path({str(tmp_path)!r})
model = make_tiny_model(tmp / "m.onnx")
mp = make_map(tmp / "map", width_px=160, height_px=160)
from skyloc.runtime.maps.tileset_build import build_tileset
tiles = build_tileset(model, mp, tmp / "t.npz", tile_m=60, stride_m=40, progress=False)
from skyloc.runtime.run.loop import RunOptions, run
from skyloc.runtime.outputs.writers import JsonLinesOutput
import cv2
frames = tmp / "frames"; frames.mkdir()
cv2.imwrite(str(frames / "0.png"), cv2.imread(str(mp))[:64, :64])
run(model, tiles, str(frames), [JsonLinesOutput(tmp / "fixes.jsonl")], RunOptions(handle_signals=False))
from skyloc.runtime.report.build import write_report
write_report(tmp / "fixes.jsonl", tmp / "rep", mp)
calibrated = False
try:
    from skyloc.calibration.quantize import calibrate
except ImportError:
    pass
else:
    for i in range(4):
        cv2.imwrite(str(frames / f"c{{i}}.png"), cv2.imread(str(mp))[i * 20:i * 20 + 64, :64])
    try:
        calibrate(model, [frames], tmp / "int8", num_images=4, progress=False)
        calibrated = True
    except Exception as exc:
        calibrated = repr(exc)
after = (root.level, list(root.handlers), logging.root.manager.disable)
names = sorted(n for n in logging.root.manager.loggerDict if n.startswith("skyloc"))
orphans = [n for n in names if n not in sys.modules and not any(m.startswith(n + ".") for m in sys.modules)]
print(json.dumps({{"same": before == after, "before": str(before), "after": str(after), "orphans": orphans,
                  "names": names, "calibrated": calibrated}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same"], (out["before"], out["after"], out["calibrated"])
    assert out["orphans"] == [], out["orphans"]  # a logger named after no module: not __name__
    assert any(n.startswith("skyloc.runtime.") for n in out["names"])


def test_a_missing_optional_package_names_what_to_install(tmp_path) -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['rasterio'] = None\n"
            "from skyloc.cli import main\n"
            f"print('RC', main(['train', '--data', 'x', '--out', {str(tmp_path / 'run')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RC 2" in r.stdout, r.stderr[-2000:]
    assert "torch is not installed" in r.stderr and 'pip install -e ".[train]"' in r.stderr
    assert "Traceback" not in r.stderr


def test_main_in_process_leaves_the_root_logger_as_it_was(tmp_path) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    assert main(["--log-level", "DEBUG", "--log-file", str(tmp_path / "l.log"), "report",
                 str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "rep")]) == 2
    assert (root.level, list(root.handlers)) == before
    assert not (tmp_path / "rep").exists()  # a bad input leaves no empty report folder


def test_loop_commands_get_one_blas_thread_before_numpy_loads() -> None:
    """`run` and the benches that drive its loop in-process set OPENBLAS_NUM_THREADS=1 (unless the
    user set it) before numpy is imported; other commands leave it alone."""
    import os

    code = (
        "import os, sys, contextlib, io\n"
        "from skyloc.cli import main\n"
        "assert 'numpy' not in sys.modules\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        "        main(sys.argv[1:])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('BLAS', os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for argv, want in ((["run", "--help"], "1"), (["bench", "flight-latency", "--help"], "1"),
                       (["bench", "flight", "--help"], "1"), (["bench", "search", "--help"], "None"),
                       (["tiles", "--help"], "None")):
        out = subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True,
                             env=env).stdout
        assert f"BLAS {want}" in out, (argv, out)
    out = subprocess.run([sys.executable, "-c", code, "run", "--help"], check=True, capture_output=True, text=True,
                         env={**env, "OPENBLAS_NUM_THREADS": "2"}).stdout
    assert "BLAS 2" in out  # the user's own setting wins
