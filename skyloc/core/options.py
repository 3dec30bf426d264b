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
(comma-separated on the command line, an array in TOML), and another options dataclass as an
`opt_group` (its flags --PREFIX-FIELD, its `[section.FIELD]` table). A field without `opt` metadata, or
with `cli=False`, is not a flag (it can still come from a config file when its type is one of
those). A flag given as `none` sets an optional field to None (overrides a config value).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Iterable
from typing import Any

from skyloc.core.errors import SkylocError

# the value conversions and checks live in option_values.py; imported here, the names callers use
from skyloc.core.option_values import (  # noqa: F401
    _check_items,
    _check_number,
    _convert,
    _convert_scalar,
    _kind,
    _split_optional,
    check_number,
    number,
)

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


def opt_group(cls: type, help: str = "") -> Any:
    """A field holding another options dataclass (e.g. a registrar's Conf), which stays the one source
    of its defaults: its fields become the flags `--PREFIX-FIELD` (PREFIX: the class's `option_prefix`,
    else this field's name), the `[SECTION.FIELD]` table of a TOML config, and a nested object of the
    resolved config. Its fields with `cli=False` are set by the command itself, not by the user."""
    # cli=False: the group is no flag itself (its fields are)
    return dataclasses.field(default_factory=cls, metadata={"help": help, "skyloc_group": True, "cli": False})


def group_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """The `opt_group` fields of the options dataclass `cls`, with their classes."""
    return [(f, tp) for f, kind, tp, _ in _fields(cls) if f.metadata.get("skyloc_group")]


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


def _flag(f: dataclasses.Field, prefix: str | None = None) -> str:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return f"--{prefix}-{flag[2:]}" if prefix else flag


def _prefix(cls: type, default: str | None = None) -> str | None:
    """The flag prefix of an `opt_group` class (its fields' flags are --PREFIX-FIELD)."""
    return getattr(cls, "option_prefix", None) or default


def check_options(obj: Any) -> None:
    """Refuse a field value of the wrong type, non-finite, out of range or not among its choices.

    Call it from the dataclass's `__post_init__`; the error names the field and its flag.
    """
    for f, kind, tp, optional in _fields(type(obj)):
        value = getattr(obj, f.name)
        meta = f.metadata
        where = f"{type(obj).__name__}.{f.name} ({_flag(f, _prefix(type(obj)))})" \
            if meta.get("cli", True) and kind != "other" \
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
        _check_items(items, meta, where)


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
        if "%(default)" in help_ or default is None or default is False or default == "" \
                or default is argparse.SUPPRESS \
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
                skip: Iterable[str] = (), _group: tuple[str, str] | None = None) -> None:
    """Add one flag per field of the dataclass `cls` (and `--config FILE.toml` unless config=False).

    `parser` may be an argument group. The argparse defaults are the dataclass defaults (so
    `--help` shows them and code reading `args.x` sees them); `options_from_args` knows which
    flags were typed and merges a config file under them. An `opt_group` field adds an argument group
    of --PREFIX-FIELD flags (dest "FIELD.SUBFIELD"), whose values are range-checked as they parse.
    """
    skip = set(skip)
    prefix, dest_of = (_group[0], lambda name: f"{_group[1]}.{name}") if _group else (None, lambda name: name)
    if config:
        parser.add_argument("--config", dest=_CONFIG_DEST, default=None, metavar="FILE.toml",
                            help="read options from a TOML file (or a resolved-config JSON); "
                                 "flags typed here override it")
    for f, kind, tp, optional in _fields(cls):
        meta = f.metadata
        if meta.get("skyloc_group") and f.name not in skip and _group is None:
            title = meta.get("help") or f.name
            target = parser.add_argument_group(title) if isinstance(parser, argparse.ArgumentParser) else parser
            add_options(target, tp, config=False, _group=(_prefix(tp, f.name.replace("_", "-")), f.name))
            continue
        if f.name in skip or not meta.get("skyloc_opt") or not meta.get("cli", True) or kind == "other":
            continue
        default = _default_of(f)
        if default is dataclasses.MISSING:
            default = None
        flag = _flag(f, prefix)
        help_ = meta.get("help") or ""
        common = {"dest": dest_of(f.name), "default": default}
        if kind == "scalar" and tp is bool:  # optional: absent = None
            # --x / --no-x, whatever the default, so a flag can always override a config file; an optional
            # switch left out stays None (e.g. "the preset's value")
            parser.add_argument(flag, "--no-" + flag[2:], action=_Explicit, nargs=0, help=help_, **common)
            continue

        def convert(text: str, option_string: str | None, kind=kind, tp=tp, optional=optional, f=f) -> Any:
            where = option_string or _flag(f, prefix)
            value = _convert(text, kind, tp, optional, where, f.metadata.get("sep", ","))
            if prefix and value is not None:  # refused as it parses: exit 2 naming the flag, like argparse's own
                _check_items(list(value) if kind == "tuple" else [value], f.metadata, where)
            return value

        metavar = meta.get("metavar")
        if metavar is None and meta.get("choices") is not None and kind == "scalar":
            metavar = "{" + ",".join(str(c) for c in meta["choices"]) + "}"
        elif metavar is None and kind == "tuple":
            metavar = "X,Y,..."
        if kind == "tuple" and meta.get("nargs"):
            common["nargs"] = meta["nargs"]
            metavar = meta.get("metavar")
        if metavar is None and prefix:  # not "NCC.MIN_RATIO" (the dest)
            metavar = f.name.upper()
        if not flag.startswith("-"):  # a positional operand: argparse names its dest after it
            del common["dest"]
        parser.add_argument(flag, action=_Explicit, convert=convert, help=help_, metavar=metavar, **common)


def explicit_flags(args: argparse.Namespace) -> set[str]:
    """The dests the user typed on the command line."""
    return set(getattr(args, _EXPLICIT, set()) or set())
