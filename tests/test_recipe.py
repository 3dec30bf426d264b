"""benchmarks/RECIPE.md end to end: every bash block of the GPU reproduction recipe, unchanged,
expanded by bash, each command run on the tiny University-1652-layout fixture (ResNet-18 weights
file, 1 epoch, 64 px, CPU)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "benchmarks" / "RECIPE.md"
DIRS = ("drone->satellite", "satellite->drone")


def recipe_script() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", RECIPE.read_text(), flags=re.S)
    assert len(blocks) >= 5, "RECIPE.md lost its command blocks"
    return "\n".join(blocks)


def test_recipe_commands_run_on_the_tiny_fixture(tmp_path: Path):
    torch = pytest.importorskip("torch")
    import torchvision

    from test_eval import make_tree

    data = make_tree(tmp_path / "u1652")
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    runs = tmp_path / "runs"
    script = recipe_script()
    for flag in ("--preset msba ", "--preset msba-384", "--pretrained \"$WEIGHTS\"", "--reweight on", "--parts table7"):
        assert flag in script, flag
    env = {**os.environ, "DATA": str(data), "WEIGHTS": str(weights), "RUNS": str(runs),
           "DEV": "--device cpu --workers 0", "SMOKE": "--backbone resnet18 --epochs 1 --size 64 --no-progress",
           "SIZES": "96"}
    # bash expands the blocks (variables, loops, quoting); a `skyloc` shell function records each
    # command's argv, which then runs in this process (one torch import instead of twenty).
    shim = "skyloc() { for a in \"$@\"; do printf '%s\\037' \"$a\"; done; printf '\\036'; }\n"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", shim + script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [c.split("\x1f")[:-1] for c in proc.stdout.split("\x1e")[:-1]]
    assert [c[0] for c in commands].count("train") == 8 and [c[0] for c in commands].count("eval") == 10
    from skyloc import cli

    torch.set_num_threads(1)
    for argv in commands:
        assert cli.main(argv) == 0, argv

    expected = {"msba": "eval.json", "msba-384": "eval.json", "msba-96": "eval.json",
                "lpn+ms+global+ba+kl": "eval-reweight.json"}
    expected.update({p: "eval.json" for p in ("lpn", "lpn+ms", "lpn+ms+global", "lpn+ms+global+ba",
                                               "lpn+ms+global+ba+kl")})
    for run, name in expected.items():
        report = json.loads((runs / run / name).read_text())
        assert all(0.0 <= report["results"][d]["R@1"] <= 100.0 for d in DIRS), run
        cfg = json.loads((runs / run / "config.json").read_text())
        assert cfg["model"]["backbone"] == "resnet18" and cfg["train"]["epochs"] == 1
        assert cfg["model"]["pretrained"] == str(weights) and cfg["model"]["ring_pooling"] == "lpn"
        assert cfg["train"]["selection"] == "last"
    # --size after $SMOKE wins: Table 6 trains (and evaluates) at its own size
    assert json.loads((runs / "msba-96" / "config.json").read_text())["model"]["image_size"] == 96
    assert json.loads((runs / "msba-96" / "eval.json").read_text())["options"]["image_size"] == 96
    assert json.loads((runs / "lpn+ms+global+ba+kl" / "eval-reweight.json").read_text())["options"]["reweight"] is True
    t7 = json.loads((runs / "msba" / "eval-table7.json").read_text())["tables"]["parts"]
    assert [r["name"] for r in t7] == ["P1", "P2", "P3", "P4", "P5", "P6", "Global", "All", "All+RW"]
