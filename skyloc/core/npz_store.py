"""The one reader of skyloc's npz stores (tile sets, map-feature stores): named arrays plus a JSON
`meta` string with a `format` tag, read without pickle. Both refuse, with the caller's hint, a file
that is not such a store, a damaged one (torn download, flipped bits) and one of another format.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.errors import SkylocError


def read_npz_store(path: Path, names: Iterable[str], fmt: str, what: str, hint: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays by name, meta) of the store at `path`; `what` names it in errors ("tile set", ...)."""
    names = set(names)
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != names | {"meta"}:
                raise SkylocError(f"{path} is not a skyloc {what} (holds {sorted(z.files)}): {hint}")
            arrays = {k: z[k] for k in names}
            meta = json.loads(str(z["meta"][()]))
    except SkylocError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, json.JSONDecodeError, TypeError) as exc:
        raise SkylocError(f"{what} {path} is truncated or damaged ({type(exc).__name__}: {exc}): {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else "?"
        raise SkylocError(f"{what} {path} has format {found!r}, expected {fmt!r}: {hint}")
    return arrays, meta
