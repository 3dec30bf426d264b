"""Installs for the NVIDIA path (issue 21 items 2 and 7):

- the `[gpu]` extra beside the pinned torch resolves to one major version of the CUDA Python
  bindings, the one torch requires (pip's own resolver, `pip install --dry-run --report`);
- requirements/jetpack6.txt is the base install minus what JetPack brings (OpenCV, ONNX
  Runtime), with numpy < 2. (.ci/run resolves both lists for aarch64 / Python 3.10, wheels only.)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TORCH_PIN = "torch==2.14.1"  # .ci/run's pin
BINDINGS = ("cuda-python", "cuda-bindings")
NVIDIA_INDEX = "https://pypi.nvidia.com/"
OFFLINE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                     r"Could not fetch URL|Network is unreachable|ConnectTimeout|ReadTimeout")


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
        return True
    except Exception:
        return False


def _dry_run(reqs: list[str], tmp_path: Path, extra_index: str | None = None) -> dict:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *reqs]
    if extra_index:
        cmd[4:4] = ["--extra-index-url", extra_index]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and OFFLINE.search(r.stdout + r.stderr):
        pytest.skip(f"the package index is not reachable from here: {OFFLINE.search(r.stdout + r.stderr).group(0)}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return json.loads(report.read_text())


def test_gpu_extra_and_torch_resolve_one_cuda_bindings_major(tmp_path: Path) -> None:
    """`[gpu]` with the pinned torch: every CUDA-bindings distribution pip would install has the
    one major version torch itself requires. TensorRT's `tensorrt-cu*-libs` metadata lives on
    pypi.nvidia.com (PyPI holds only a stub that downloads from there), so without that index
    the TensorRT requirements are left out of the resolution; they do not depend on the bindings."""
    gpu = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    with_trt = _reachable(NVIDIA_INDEX)
    reqs = [r for r in gpu if with_trt or not Requirement(r).name.startswith("tensorrt")]
    assert any(Requirement(r).name in BINDINGS for r in reqs), gpu
    report = _dry_run([TORCH_PIN, *reqs], tmp_path, NVIDIA_INDEX if with_trt else None)
    installed = {i["metadata"]["name"].lower(): i["metadata"] for i in report["install"]}
    torch_meta = installed["torch"]
    wanted = [Requirement(d) for d in torch_meta.get("requires_dist", [])]
    wanted = [d for d in wanted if d.name == "cuda-bindings" and (d.marker is None or d.marker.evaluate())]
    assert wanted, "torch no longer requires cuda-bindings: revisit the [gpu] extra's binding range"
    spec: SpecifierSet = wanted[0].specifier
    versions = {name: installed[name]["version"] for name in BINDINGS if name in installed}
    assert versions.get("cuda-bindings") and spec.contains(versions["cuda-bindings"]), (versions, str(spec))
    majors = {v.split(".")[0] for v in versions.values()}
    assert len(majors) == 1, f"two CUDA binding majors would be installed over each other: {versions}"


def test_gpu_extras_pin_the_binding_major_to_the_tensorrt_build() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, major in (("gpu", 13), ("gpu-cu12", 12)):
        reqs = {Requirement(r).name: Requirement(r).specifier for r in extras[extra]}
        assert f"tensorrt-cu{major}" in reqs, (extra, reqs)
        (binding,) = [n for n in reqs if n in BINDINGS]
        spec = reqs[binding]
        assert spec.contains(f"{major}.9") and not spec.contains(f"{major + 1}.0") and not spec.contains(f"{major - 1}.9")


def _names(reqs: list[str]) -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def test_jetpack6_requirements_are_the_base_install_without_jetpacks_packages() -> None:
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements" / "jetpack6.txt").read_text().splitlines()]
    jetson = _names([ln for ln in lines if ln])
    base = _names(PYPROJECT["project"]["dependencies"])
    from_jetpack = {"opencv-python-headless", "onnxruntime"}
    assert set(jetson) == set(base) - from_jetpack
    for name, req in jetson.items():  # pyproject's lower bound, never a looser one
        lower = [s.version for s in base[name].specifier if s.operator == ">="]
        assert all(req.specifier.contains(v) for v in lower) and not req.specifier.contains("0.1"), (name, str(req))
    assert not jetson["numpy"].specifier.contains("2.0") and jetson["numpy"].specifier.contains("1.26.4")


def test_ci_resolves_the_base_install_for_aarch64() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip download" in ci and "--only-binary=:all:" in ci and "--python-version 3.10" in ci
    assert "requirements/jetpack6.txt" in ci and "manylinux_2_${glibc}_aarch64" in ci
