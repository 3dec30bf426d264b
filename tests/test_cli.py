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
