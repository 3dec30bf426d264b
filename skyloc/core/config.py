"""Options from a `--config` TOML file and the command line, and the resolved config every command writes beside its output."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from skyloc.core.atomic import write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core.options import (
    _CONFIG_DEST,
    CONFIG_FORMAT,
    _convert,
    _default_of,
    _fields,
    _flag,
    explicit_flags,
    group_fields,
)


def load_config(path: str | os.PathLike, section: str | None = None) -> dict[str, Any]:
    """The option table of a TOML file (its `[section]` table when it has one) or of a resolved JSON."""
    path = Path(path)
    if not path.is_file():
        raise SkylocError(f"config file {path} not found: pass an existing .toml file to --config")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SkylocError(f"config file {path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT or not isinstance(data.get("options"), dict):
            raise SkylocError(f"config file {path}: a JSON config must be a resolved config written by skyloc "
                              f"(format {CONFIG_FORMAT!r}); write options by hand as TOML")
        return dict(data["options"])
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SkylocError(f"config file {path} is not valid TOML ({exc})") from None
    # "bench.search" is the [bench.search] table; the deepest table present applies
    for key in section.split(".") if section else ():
        if not isinstance(data.get(key), dict):
            break
        data = data[key]
    return dict(data)


def options_from_config(cls: type, table: dict[str, Any], source: str = "config",
                        base: Any | None = None) -> Any:
    """`cls` built from defaults (or `base`) updated with a config table; unknown keys are refused."""
    values = _values_of(cls, base)
    by_key = _keys(cls)
    for key, value in table.items():
        if isinstance(value, dict):
            group = by_key.get(key) or by_key.get(key.replace("-", "_"))
            if group is not None and group[0].metadata.get("skyloc_group"):  # [section.group]: an opt_group field
                where = f"{source} [{key}]"
                try:
                    values[group[0].name] = options_from_config(group[2], value, where, base=values.get(group[0].name))
                except SkylocError as exc:  # a range check of the group's class: say which file and table
                    raise SkylocError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
            continue  # else another command's [section]
        f = by_key.get(key) or by_key.get(key.replace("-", "_"))
        if f is None:
            known = ", ".join(sorted(n for n in by_key if "-" not in n))
            raise SkylocError(f"{source}: unknown option {key!r} for {cls.__name__}; known: {known}")
        field_, kind, tp, optional = f
        if kind == "other":
            raise SkylocError(f"{source}: option {key!r} cannot be set from a config file")
        values[field_.name] = _convert(value, kind, tp, optional, f"{source}: {key}", field_.metadata.get("sep", ","))
    return cls(**values)


def _values_of(cls: type, base: Any | None) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        out[f.name] = getattr(base, f.name) if base is not None else _default_of(f)
        if out[f.name] is dataclasses.MISSING:
            del out[f.name]
    return out


def _keys(cls: type) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    for entry in _fields(cls):
        f = entry[0]
        keys[f.name] = entry
        keys[_flag(f)[2:].replace("-", "_")] = entry  # the flag's name works too (max_speed for max_speed_mps)
    return keys


def options_from_args(cls: type, args: argparse.Namespace, section: str | None = None) -> Any:
    """Resolve `cls`: dataclass defaults < the `--config` file < flags typed on the command line."""
    config = getattr(args, _CONFIG_DEST, None)
    obj = options_from_config(cls, load_config(config, section), source=f"config file {config}") \
        if config else cls()
    typed = explicit_flags(args)
    updates = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in typed}
    for g, gcls in group_fields(cls):  # --PREFIX-FIELD flags of an opt_group: dest "group.field"
        sub = {f.name: getattr(args, f"{g.name}.{f.name}") for f in dataclasses.fields(gcls)
               if f"{g.name}.{f.name}" in typed}
        if sub:
            updates[g.name] = dataclasses.replace(getattr(obj, g.name), **sub)
    return dataclasses.replace(obj, **updates) if updates else obj


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, float) and not math.isfinite(x):
        raise SkylocError(f"cannot write the non-finite value {x} to a config")
    return x


def config_path_beside(out: str | os.PathLike) -> Path:
    """Where a command records the options it used: `<out name>.config.json` beside its output (m.onnx ->
    m.onnx.config.json), named after the whole output so two commands' outputs with one stem never collide."""
    out = Path(out)
    return out.with_name(out.name + ".config.json")


def write_resolved_config(obj: Any, path: str | os.PathLike, **extra: Any) -> Path:
    """Write the options a run actually used as JSON (atomic); `--config` reads it back."""
    from skyloc import __version__

    data = {"format": CONFIG_FORMAT, "options_type": type(obj).__name__, "skyloc_version": __version__,
            "options": _jsonable(obj), **{k: _jsonable(v) for k, v in extra.items()}}
    return write_json_atomic(path, data, sort_keys=True)
