"""JSON sidecars that travel with every exported artifact.

The runtime reads the input contract and the model fingerprint from here; nothing about the
model is ever typed twice on a command line. `model.onnx` -> `model.json`,
`model.engine` -> `model.engine.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.core.atomic import write_json_atomic  # noqa: F401  (re-exported for old imports)

MODEL_FORMAT = "skyloc-model/1"
ENGINE_FORMAT = "skyloc-engine/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "fp16", "int8-ort", "int8-trt")
VARIANTS = ("full", "global")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class InputContract:
    """What the model's input tensor expects.

    Default (what `skyloc export` writes): uint8 RGB NHWC, square, normalization baked into
    the graph, so the edge only crops, resizes and feeds bytes. `resize` says how a frame of
    another shape becomes HxW: centre square crop, then area resize (cv2.INTER_AREA). This is the
    one preprocessing of skyloc: training, `skyloc eval`, calibration, the tile builder and the
    runtime all apply it through runtime.preprocess (which refuses a `resize` it does not know).
    """

    name: str = "image"
    layout: str = "NHWC"
    dtype: str = "uint8"
    height: int = 256
    width: int = 256
    color: str = "RGB"
    normalization: str = "baked"  # "baked" into the graph, or "declared" (apply mean/std on host)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "center-crop-square+area"


@dataclass
class ModelSidecar:
    variant: str  # "full" | "global"
    embedding_dim: int
    precision: str  # one of PRECISIONS
    opset: int
    model_id: str  # fingerprint of the checkpoint the weights came from
    onnx_sha256: str
    input: InputContract = field(default_factory=InputContract)
    output_name: str = "embedding"
    backbone: str = ""
    checkpoint: str = ""  # file name only, for the humans reading it
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = MODEL_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.input, dict):
            d = dict(self.input)
            for k in ("mean", "std"):
                if k in d:
                    d[k] = tuple(d[k])
            self.input = InputContract(**d)
        if self.variant not in VARIANTS:
            raise SkylocError(f"sidecar variant {self.variant!r} is not one of {VARIANTS}")
        if self.precision not in PRECISIONS:
            raise SkylocError(f"sidecar precision {self.precision!r} is not one of {PRECISIONS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_sidecar_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_suffix(".json") if p.suffix == ".onnx" else p.with_name(p.name + ".json")


def write_model_sidecar(model_path: str | os.PathLike, sidecar: ModelSidecar) -> Path:
    return write_json_atomic(model_sidecar_path(model_path), sidecar.to_dict(), sort_keys=True)


def _read_json(path: Path, what: str, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise SkylocError(f"{what} {path} not found: {hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkylocError(f"{what} {path} is not valid JSON ({exc}): {hint}") from None
    if not isinstance(data, dict):
        raise SkylocError(f"{what} {path} holds a JSON {type(data).__name__}, not an object: {hint}")
    return data


# Lower bounds of the numeric fields (all sidecar dataclasses share these names).
_MIN = {"embedding_dim": 1, "opset": 1, "height": 1, "width": 1, "max_batch": 1, "min_batch": 1, "opt_batch": 0}


def _non_finite(obj: Any, where: str) -> str | None:
    """Dotted path of the first NaN / Inf in a parsed JSON tree (json accepts NaN, Infinity, 1e999)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        bad = _non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` (parsed JSON) does not fit the annotation `hint`; None when it does."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is not None:
        ok = isinstance(value, expected) and (hint is bool or not isinstance(value, bool))
        return None if ok else f"must be {hint.__name__}, got {type(value).__name__} {value!r:.40}"
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, list):
            return f"must be a list, got {type(value).__name__}"
        elem = args[0] if args else Any
        for i, v in enumerate(value):
            if (p := _type_problem(v, elem)) is not None:
                return f"item {i} {p}"
        return None
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return None if isinstance(value, dict) else f"must be an object, got {type(value).__name__}"
    return None


def _check_schema(data: Any, cls: type, path: Path, hint: str, prefix: str = "") -> None:
    """Refuse sidecar JSON that does not fit `cls`: not an object, missing / unknown / mistyped
    fields, numbers out of range, NaN or Inf anywhere. Names the file and the field."""
    if not prefix and (bad := _non_finite(data, "")):
        raise SkylocError(f"{path}: field {bad!r} is not a finite number: {hint}")
    if not isinstance(data, dict):
        raise SkylocError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a JSON object: {hint}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    unknown = sorted(set(data) - set(fields))
    if missing or unknown:
        what = "; ".join(x for x in (f"missing field(s) {[prefix + m for m in missing]}" if missing else "",
                                     f"unknown field(s) {[prefix + u for u in unknown]}" if unknown else "") if x)
        raise SkylocError(f"{path}: {what}: {hint}")
    for name, value in data.items():
        h = hints[name]
        if (p := _type_problem(value, h)) is not None:
            raise SkylocError(f"{path}: field {prefix + name!r} {p}: {hint}")
        if dataclasses.is_dataclass(h):
            _check_schema(value, h, path, hint, f"{prefix}{name}.")
        if name in _MIN and value < _MIN[name]:
            raise SkylocError(f"{path}: field {prefix + name!r} is {value}, must be >= {_MIN[name]}: {hint}")
        if name == "std" and any(v <= 0 for v in value):
            raise SkylocError(f"{path}: field {prefix + name!r} must be positive, got {value}: {hint}")


def check_onnx_model_id(model_path: str | os.PathLike, sidecar: ModelSidecar, metadata: dict[str, str]) -> None:
    """Refuse an ONNX whose embedded `skyloc.model_id` / `skyloc.variant` metadata (what
    `skyloc export` writes into the graph) disagrees with its sidecar. `metadata`: the model's
    custom metadata, e.g. `session.get_modelmeta().custom_metadata_map`. Models without the
    entries (built by other tools) are accepted: their sidecar's sha256 still binds them."""
    for key, want in (("skyloc.model_id", sidecar.model_id), ("skyloc.variant", sidecar.variant)):
        got = metadata.get(key)
        if got is not None and got != want:
            raise SkylocError(
                f"{model_path} says {key}={got!r} but its sidecar {model_sidecar_path(model_path)} says "
                f"{want!r}: the sidecar belongs to another model or was edited; re-export the model "
                f"with `skyloc export onnx` (it writes both)")


def _read_sidecar(path: Path, what: str, fmt: str, cls: type, hint: str) -> dict[str, Any]:
    """The sidecar's JSON, refused unless it has the format tag and the fields of `cls`."""
    data = _read_json(path, what, hint)
    if data.get("format") != fmt:
        raise SkylocError(f"{path} has format {data.get('format')!r}, expected {fmt!r}: {hint}")
    _check_schema(data, cls, path, hint)
    return data


def read_model_sidecar(model_path: str | os.PathLike, verify: bool = True) -> ModelSidecar:
    """Read `model.json` beside `model.onnx`; with `verify`, refuse it if the ONNX changed."""
    model_path = Path(model_path)
    path = model_sidecar_path(model_path)
    hint = "re-export the model with `skyloc export onnx` (it writes the sidecar beside the ONNX)"
    sidecar = ModelSidecar(**_read_sidecar(path, "model sidecar", MODEL_FORMAT, ModelSidecar, hint))
    if verify and model_path.suffix == ".onnx":
        if not model_path.is_file():
            raise SkylocError(f"model {model_path} not found")
        actual = sha256_file(model_path)
        if actual != sidecar.onnx_sha256:
            raise SkylocError(
                f"{model_path} does not match its sidecar {path} (sha256 {actual[:12]}… != "
                f"{sidecar.onnx_sha256[:12]}…): the ONNX was modified or replaced; {hint}"
            )
    return sidecar


@dataclass
class EngineSidecar:
    """What a TensorRT engine was built from and for; the runtime refuses a mismatch."""

    model: ModelSidecar  # the ONNX's sidecar, so the engine carries the same input contract
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # e.g. "8.7" (Jetson Orin)
    precision: str
    onnx_sha256: str
    max_batch: int
    version_compatible: bool = False
    opt_batch: int = 0  # batch size the profile was tuned for (0 = not recorded)
    min_batch: int = 1
    format: str = ENGINE_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelSidecar(**self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_engine_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    return write_json_atomic(model_sidecar_path(engine_path), sidecar.to_dict(), sort_keys=True)


def read_engine_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    path = model_sidecar_path(engine_path)
    hint = "rebuild the engine on this device with `skyloc engine --onnx MODEL.onnx --out MODEL.engine`"
    return EngineSidecar(**_read_sidecar(path, "engine sidecar", ENGINE_FORMAT, EngineSidecar, hint))
