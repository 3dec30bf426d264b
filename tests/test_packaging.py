"""The install: one top-level package `skyloc` in the wheel, every subpackage listed, and the
`skyloc` / `python -m skyloc` entry points."""
from __future__ import annotations

import os
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
            "import importlib.util, skyloc, skyloc.runtime.geo, skyloc.cli; "
            "print(skyloc.__file__); print(skyloc.runtime.geo.__file__); "
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
