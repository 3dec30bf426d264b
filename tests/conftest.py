"""Session-wide fixtures. The quick demo trains the one model the suite's accuracy tests share."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """Run `skyloc demo --quick` once (procedural world -> ... -> run -> report)."""
    pytest.importorskip("torch")
    from training.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig.quick(out)
    report = run_demo(cfg, progress=False)
    return {"out": Path(out), "report": report, "config": cfg}
