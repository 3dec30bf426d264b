"""User-facing errors: the CLI prints the message (no traceback) and exits 2."""
from __future__ import annotations


class SkylocError(Exception):
    """A problem the user can fix: bad path, wrong file, mismatched artifacts.

    The message must name the file or value and say what to do.
    """
