"""Option values: the types an options dataclass field may have, converting a TOML / command-line
value to one, and the one numeric check (finite, in range) every option and hand-written flag uses."""
from __future__ import annotations

import argparse
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError

# ---- types ---------------------------------------------------------------------------------

def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        # str | Path and the like: a path-ish string
        if all(a in (str, Path) for a in args):
            return str, optional
        return tp, optional
    return tp, False


def _kind(tp: Any) -> tuple[str, Any, bool]:
    """('scalar', type, optional) or ('tuple', element type, optional); ('other', tp, _) when unsupported."""
    inner, optional = _split_optional(tp)
    if inner in (bool, int, float, str):
        return "scalar", inner, optional
    if inner is Path or (isinstance(inner, type) and issubclass(inner, os.PathLike)):
        return "scalar", str, optional
    if typing.get_origin(inner) in (tuple, list):
        args = typing.get_args(inner)
        elem = args[0] if args else str
        if elem in (int, float, str):
            return "tuple", elem, optional
    return "other", inner, optional



def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML / command-line value to `tp`; strings are parsed, other types must match."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SkylocError(f"{where}: {value!r} is not true/false")
    if tp is int:
        if isinstance(value, bool):
            raise SkylocError(f"{where}: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
            try:  # 1e5: a whole number in scientific notation (never 2.5, nan or inf)
                if float(value).is_integer():
                    return int(float(value))
            except ValueError:
                pass
        raise SkylocError(f"{where}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise SkylocError(f"{where}: {value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SkylocError(f"{where}: {value!r} is not a number")
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise SkylocError(f"{where}: {value!r} is not a string")
    return value


def _convert(value: Any, kind: str, tp: Any, optional: bool, where: str, sep: str = ",") -> Any:
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise SkylocError(f"{where}: a value is required (this option cannot be none)")
    if kind == "tuple":
        items = [s for s in value.split(sep) if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SkylocError(f"{where}: {value!r} is not a list")
        return tuple(_convert_scalar(v, tp, where) for v in items)
    if kind == "scalar":
        return _convert_scalar(value, tp, where)
    return value


# ---- checks --------------------------------------------------------------------------------

def _check_number(x: Any, meta: dict, where: str) -> None:
    if isinstance(x, float) and not math.isfinite(x):
        raise SkylocError(f"{where} = {x}: must be a finite number")
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return
    # written as "not (x >= b)" so that a NaN could never pass, whatever the type checks above
    if meta.get("ge") is not None and not x >= meta["ge"]:
        raise SkylocError(f"{where} = {x}: must be >= {meta['ge']}")
    if meta.get("gt") is not None and not x > meta["gt"]:
        raise SkylocError(f"{where} = {x}: must be > {meta['gt']}")
    if meta.get("le") is not None and not x <= meta["le"]:
        raise SkylocError(f"{where} = {x}: must be <= {meta['le']}")
    if meta.get("lt") is not None and not x < meta["lt"]:
        raise SkylocError(f"{where} = {x}: must be < {meta['lt']}")


def check_number(x: Any, where: str, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None) -> None:
    """The one numeric check (finite, in range), raising SkylocError naming `where` (the flag)."""
    _check_number(x, {"ge": ge, "gt": gt, "le": le, "lt": lt}, where)


def number(tp: type = float, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """argparse `type=` for a plain argparse flag: parses `tp` and runs `check_number` on it, so a
    hand-written parser refuses NaN / inf / out-of-range values like the dataclass options do
    (argparse names the flag: "argument --speed: 'inf': must be a finite number"; exit 2)."""
    def parse(text: str) -> Any:
        try:
            v = _convert_scalar(text, tp, "value")
            _check_number(v, {"ge": ge, "gt": gt, "le": le, "lt": lt}, "value")
        except SkylocError as exc:
            why = str(exc).split(": ", 1)[-1]
            raise argparse.ArgumentTypeError(why if why.startswith(repr(text)) else f"{text!r}: {why}") from None
        return v

    parse.__name__ = tp.__name__  # argparse's "invalid float value" wording for a non-number
    return parse


def _check_items(items: list, meta: Any, where: str) -> None:
    for v in items:
        _check_number(v, meta, where)
        if meta.get("choices") is not None and v not in meta["choices"]:
            choices = ", ".join(str(c) for c in meta["choices"])
            raise SkylocError(f"{where} = {v!r}: choose one of {choices}")
