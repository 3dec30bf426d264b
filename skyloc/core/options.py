"""Command options from dataclasses: one place for every default, help text and check.

A command's options are a dataclass whose fields carry their help, choices and range in the
field metadata (`opt(...)`). From it come the argparse flags (`add_options`), the checks that
run on construction (`check_options`, call it from `__post_init__`), the TOML config a user
may pass (`--config FILE.toml`, merged *under* the flags typed on the command line) and the
resolved config written beside the outputs (`write_resolved_config`). Nothing repeats a default.

    @dataclass
    class TilesOptions:
        tile_m: float = opt(150.0, "tile side on the ground, metres", gt=0)
        def __post_init__(self): check_options(self)

    add_options(parser, TilesOptions)           # --tile-m, with its help and default
    opts = options_from_args(TilesOptions, args)  # defaults < --config file < typed flags

Field types understood: bool, int, float, str, Path, `X | None`, tuple[float|int|str, ...]
(comma-separated on the command line, an array in TOML). A field without `opt` metadata, or
with `cli=False`, is not a flag (it can still come from a config file when its type is one of
those). A flag given as `none` sets an optional field to None (overrides a config value).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from skyloc.core.errors import SkylocError

CONFIG_FORMAT = "skyloc.options/1"
_EXPLICIT = "_skyloc_explicit_options"  # namespace attribute: dests the user typed
_CONFIG_DEST = "config"


def opt(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
        choices: Iterable[Any] | None = None, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, flag: str | None = None,
        metavar: str | None = None, cli: bool = True, sep: str = ",", nargs: str | None = None) -> Any:
    """A dataclass field with its help text, allowed values and range (inclusive ge/le, strict gt/lt).

    Floats must always be finite (NaN and inf are refused). `flag` renames the command-line
    flag (default: --field-name); `cli=False` keeps the field off the command line. `sep` splits a
    tuple field typed on the command line (its items may hold commas themselves with another `sep`);
    `nargs` ("+" / "*") takes a tuple as separate words instead (`--images A B`); a `flag` without
    leading dashes makes the field a positional operand.
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "ge": ge, "gt": gt,
            "le": le, "lt": lt, "flag": flag, "metavar": metavar, "cli": cli, "sep": sep, "nargs": nargs,
            "skyloc_opt": True}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


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


def _fields(cls: type) -> list[tuple[dataclasses.Field, str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, tp, optional = _kind(hints[f.name])
        out.append((f, kind, tp, optional))
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


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


def check_options(obj: Any) -> None:
    """Refuse a field value of the wrong type, non-finite, out of range or not among its choices.

    Call it from the dataclass's `__post_init__`; the error names the field and its flag.
    """
    for f, kind, tp, optional in _fields(type(obj)):
        value = getattr(obj, f.name)
        meta = f.metadata
        where = f"{type(obj).__name__}.{f.name} ({_flag(f)})" if meta.get("cli", True) and kind != "other" \
            else f"{type(obj).__name__}.{f.name}"
        if kind == "other":
            continue
        if value is None:
            if not optional:
                raise SkylocError(f"{where}: a value is required")
            continue
        if kind == "scalar":
            # the declared type, exactly (a float field accepts an int, nothing else converts)
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(obj, f.name, value)
            ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
            if tp is str and isinstance(value, os.PathLike):
                ok = True
            if not ok:
                raise SkylocError(f"{where} = {value!r}: expected {tp.__name__}")
            items = [value]
        else:
            if not isinstance(value, (tuple, list)):
                raise SkylocError(f"{where} = {value!r}: expected a list of {tp.__name__}")
            items = list(value)
            for v in items:
                if not isinstance(v, tp) and not (tp is float and isinstance(v, int) and not isinstance(v, bool)):
                    raise SkylocError(f"{where} = {value!r}: expected a list of {tp.__name__}")
        for v in items:
            _check_number(v, meta, where)
            if meta.get("choices") is not None and v not in meta["choices"]:
                choices = ", ".join(str(c) for c in meta["choices"])
                raise SkylocError(f"{where} = {v!r}: choose one of {choices}")


# ---- argparse ------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it says something: no "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if action.nargs == 0 and len(action.option_strings) == 2 and isinstance(default, bool) \
                and action.option_strings[1] == "--no-" + action.option_strings[0][2:]:
            on, off = action.option_strings  # a --x / --no-x pair (runtime.options)
            return f"{help_} (default: {on if default else off})"
        if "%(default)" in help_ or default is None or default is False or default is argparse.SUPPRESS \
                or not action.option_strings or action.nargs == 0:
            return help_
        if isinstance(default, (tuple, list)):
            if not default:
                return help_
            shown = ",".join(str(v) for v in default)
            return f"{help_} (default: {shown.replace('%', '%%')})"
        return super()._get_help_string(action)


class _Explicit(argparse.Action):
    """Store a converted value and remember that the user typed this flag."""

    def __init__(self, option_strings: list[str], dest: str, convert: Any = None, const: Any = None,
                 nargs: Any = None, **kw: Any) -> None:
        self._convert = convert
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.nargs == 0:  # a --x / --no-x switch
            value = not (option_string or "").startswith("--no-")
        else:
            try:
                value = self._convert(values, option_string)
            except SkylocError as exc:
                parser.error(str(exc))
        setattr(namespace, self.dest, value)
        explicit = getattr(namespace, _EXPLICIT, None)
        if explicit is None:
            explicit = set()
            setattr(namespace, _EXPLICIT, explicit)
        explicit.add(self.dest)


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, config: bool = True,
                skip: Iterable[str] = ()) -> None:
    """Add one flag per field of the dataclass `cls` (and `--config FILE.toml` unless config=False).

    `parser` may be an argument group. The argparse defaults are the dataclass defaults (so
    `--help` shows them and code reading `args.x` sees them); `options_from_args` knows which
    flags were typed and merges a config file under them.
    """
    skip = set(skip)
    if config:
        parser.add_argument("--config", dest=_CONFIG_DEST, default=None, metavar="FILE.toml",
                            help="read options from a TOML file (or a resolved-config JSON); "
                                 "flags typed here override it")
    for f, kind, tp, optional in _fields(cls):
        meta = f.metadata
        if f.name in skip or not meta.get("skyloc_opt") or not meta.get("cli", True) or kind == "other":
            continue
        default = _default_of(f)
        if default is dataclasses.MISSING:
            default = None
        flag = _flag(f)
        help_ = meta.get("help") or ""
        common = {"dest": f.name, "default": default}
        if kind == "scalar" and tp is bool:  # optional: absent = None
            # --x / --no-x, whatever the default, so a flag can always override a config file; an optional
            # switch left out stays None (e.g. "the preset's value")
            parser.add_argument(flag, "--no-" + flag[2:], action=_Explicit, nargs=0, help=help_, **common)
            continue

        def convert(text: str, option_string: str | None, kind=kind, tp=tp, optional=optional, f=f) -> Any:
            return _convert(text, kind, tp, optional, option_string or _flag(f), f.metadata.get("sep", ","))

        metavar = meta.get("metavar")
        if metavar is None and meta.get("choices") is not None and kind == "scalar":
            metavar = "{" + ",".join(str(c) for c in meta["choices"]) + "}"
        elif metavar is None and kind == "tuple":
            metavar = "X,Y,..."
        if kind == "tuple" and meta.get("nargs"):
            common["nargs"] = meta["nargs"]
            metavar = meta.get("metavar")
        if not flag.startswith("-"):  # a positional operand: argparse names its dest after it
            del common["dest"]
        parser.add_argument(flag, action=_Explicit, convert=convert, help=help_, metavar=metavar, **common)


def explicit_flags(args: argparse.Namespace) -> set[str]:
    """The dests the user typed on the command line."""
    return set(getattr(args, _EXPLICIT, set()) or set())
