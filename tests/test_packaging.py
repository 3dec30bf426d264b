"""The install: one top-level package `skyloc` in the wheel, every subpackage listed, and the
`skyloc` / `python -m skyloc` entry points."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import skyloc
from skyloc.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
PACKAGES: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]


def _package_folders(base: Path = ROOT) -> dict[str, Path]:
    """Every folder with an __init__.py under the mapped roots, as its dotted install name."""
    found: dict[str, Path] = {}
    for name, folder in PACKAGE_DIR.items():
        root = base / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            dotted = ".".join((name, *rel.parts))
            # a folder mapped on its own (skyloc.runtime) is also under skyloc/ only if it lives there
            found.setdefault(dotted, init.parent)
    return found


def test_packages_list_covers_every_subpackage():
    folders = _package_folders()
    missing = sorted(set(folders) - set(PACKAGES))
    assert not missing, (f"folders with an __init__.py missing from [tool.setuptools] packages in pyproject.toml "
                         f"(they would be left out of the wheel): {missing}")
    stale = sorted(set(PACKAGES) - set(folders))
    assert not stale, f"pyproject packages without a folder: {stale}"
    assert all(p == "skyloc" or p.startswith("skyloc.") for p in PACKAGES)


def _copy_sources(dest: Path) -> Path:
    # Built from a copy: an in-place build would leave build/ and *.egg-info in the checkout.
    dest.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, dest / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "results", "*.tmp")
    for folder in sorted(set(PACKAGE_DIR.values())):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available to build the wheel")
    assert r.returncode == 0, r.stderr[-3000:]
    wheels = list(out.glob("skyloc-*.whl"))
    assert len(wheels) == 1, wheels
    wheels[0].with_suffix(".src").write_text(str(src))  # the tree it was built from, for the checks
    return wheels[0]


def test_wheel_has_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        assert len(dist_info) == 1
        di = dist_info.pop()
        record = z.read(f"{di}/RECORD").decode().splitlines()
        top = z.read(f"{di}/top_level.txt").decode().split() if f"{di}/top_level.txt" in names else None
        entry_points = z.read(f"{di}/entry_points.txt").decode()
    tops = {n.split("/")[0] for n in names} - {di}
    assert tops == {"skyloc"}, f"the wheel installs more than skyloc: {sorted(tops)}"
    recorded = {line.split(",")[0].split("/")[0] for line in record if line.strip()} - {di}
    assert recorded == {"skyloc"}
    if top is not None:
        assert top == ["skyloc"]
    assert "skyloc = skyloc.cli:main" in entry_points
    # every subpackage's modules are in it, under its namespaced path (of the copy it was built from:
    # the checkout may gain files meanwhile)
    for dotted, folder in _package_folders(Path(wheel.with_suffix(".src").read_text())).items():
        for py in folder.glob("*.py"):
            assert f"{dotted.replace('.', '/')}/{py.name}" in names, f"{py} is not in the wheel"
    assert not any(n.startswith("skyloc/tests/") for n in names)


def test_installed_wheel_imports_only_as_skyloc(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) in (["skyloc"], ["bin", "skyloc"])
    # Imported from that folder alone, not the checkout: the editable install's finder is taken
    # out, and the stage folders must then exist only as skyloc.*
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in str(getattr(f, '__module__', ''))]; "
            f"sys.path.insert(0, {str(target)!r}); "
            "import importlib.util, skyloc, skyloc.core.geo, skyloc.cli; "
            "print(skyloc.__file__); print(skyloc.core.geo.__file__); "
            "print([m for m in ('runtime', 'training', 'export', 'calibration', 'benchmarks') "
            "if importlib.util.find_spec(m) is not None])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    file_, geo_file, generic = r.stdout.split("\n")[:3]
    assert Path(file_).is_relative_to(target) and Path(geo_file).is_relative_to(target)
    assert generic == "[]"


def _skyloc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyloc", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_python_m_skyloc_help_and_version():
    r = _skyloc("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert f"  {name} " in r.stdout
    r = _skyloc("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"skyloc {skyloc.__version__}"
    r = _skyloc("no-such-command")
    assert r.returncode == 2 and "no-such-command" in r.stderr
    # each command's help loads without torch being needed for runtime-side commands
    r = _skyloc("run", "--help")
    assert r.returncode == 0 and "--tiles" in r.stdout


def test_console_script_version():
    exe = shutil.which("skyloc")
    if exe is None:
        pytest.skip("the skyloc console script is not on PATH (package not pip-installed)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"skyloc {skyloc.__version__}"


# ---- the drone install: what `skyloc run` / `tiles` / `report` need and no more -------------

BASE_ONLY = r"""
import importlib, json, pkgutil, sys
# the extras' packages are absent, as in a base (drone) install: importing them fails
for mod in ("rasterio", "psutil", "matplotlib", "torch", "torchvision"):
    sys.modules[mod] = None
import skyloc.runtime
failed = {}
for info in pkgutil.walk_packages(skyloc.runtime.__path__, "skyloc.runtime."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
from skyloc.cli import main
rcs = {c: None for c in ("run", "tiles", "report")}
import contextlib, io
for c in rcs:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([c, "--help"])
        except SystemExit as e:
            rcs[c] = e.code
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
msg = None
try:
    open_map(sys.argv[1])
except SkylocError as exc:
    msg = str(exc)
print(json.dumps({"failed": failed, "rcs": rcs, "msg": msg}))
"""


def test_base_install_runs_without_the_extras(tmp_path):
    tif = tmp_path / "map.tif"
    tif.write_bytes(b"II*\x00" + bytes(64))  # never parsed: rasterio is "missing"
    r = subprocess.run([sys.executable, "-c", BASE_ONLY, str(tif)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]  # every runtime module imports without the extras
    assert out["rcs"] == {"run": 0, "tiles": 0, "report": 0}
    # a GeoTIFF without rasterio: a clear error naming the extra, not an ImportError
    assert out["msg"] is not None and "skyloc[maps]" in out["msg"] and str(tif) in out["msg"]


def test_extras_declare_what_the_optional_code_imports():
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    assert not names(deps) & {"rasterio", "psutil", "matplotlib", "torch", "torchvision"}
    assert "rasterio" in names(extras["maps"]) and "psutil" in names(extras["bench"])
    # the README's two first commands install what the demo and the suite use
    assert "skyloc[maps]" in extras["train"] or "rasterio" in names(extras["train"])
    assert any(r.startswith("skyloc[") and "maps" in r and "bench" in r for r in extras["test"])
    assert "pytest" in names(extras["test"])


def test_bench_results_never_go_to_site_packages(tmp_path):
    """From the checkout: ./benchmarks/results; from an installed package outside a checkout: an error
    asking for --results-dir; inside a checkout folder: that checkout's benchmarks/results."""
    from skyloc.benchmarks.report import default_results_dir

    assert default_results_dir() == ROOT / "benchmarks" / "results"
    # the module as an installed wheel would have it (no checkout around it), run from tmp_path
    fake_site = tmp_path / "site" / "skyloc" / "benchmarks"
    fake_site.mkdir(parents=True)
    shutil.copy2(ROOT / "benchmarks" / "report.py", fake_site / "report.py")
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('wheel_report', {str(fake_site / 'report.py')!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['wheel_report'] = m; spec.loader.exec_module(m)\n"
            "from skyloc.core.errors import SkylocError\n"
            "try:\n    print(m.default_results_dir())\nexcept SkylocError as e:\n    print('ERR', e)\n")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and "--results-dir" in r.stdout
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert Path(r.stdout.strip()) == ROOT / "benchmarks" / "results"
