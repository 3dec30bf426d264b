"""JSON sidecars that travel with every exported artifact.

The runtime reads the input contract and the model fingerprint from here; nothing about the
model is ever typed twice on a command line. `model.onnx` -> `model.json`,
`model.engine` -> `model.engine.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyloc.runtime.errors import SkylocError

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
    another shape becomes HxW: centre square crop, then area resize.
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


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def write_model_sidecar(model_path: str | os.PathLike, sidecar: ModelSidecar) -> Path:
    return write_json_atomic(model_sidecar_path(model_path), sidecar.to_dict())


def _read_json(path: Path, what: str, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise SkylocError(f"{what} {path} not found: {hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkylocError(f"{what} {path} is not valid JSON ({exc}): {hint}") from None


def read_model_sidecar(model_path: str | os.PathLike, verify: bool = True) -> ModelSidecar:
    """Read `model.json` beside `model.onnx`; with `verify`, refuse it if the ONNX changed."""
    model_path = Path(model_path)
    path = model_sidecar_path(model_path)
    hint = "re-export the model with `skyloc export onnx` (it writes the sidecar beside the ONNX)"
    data = _read_json(path, "model sidecar", hint)
    if data.get("format") != MODEL_FORMAT:
        raise SkylocError(f"{path} has format {data.get('format')!r}, expected {MODEL_FORMAT!r}: {hint}")
    try:
        sidecar = ModelSidecar(**data)
    except TypeError as exc:
        raise SkylocError(f"{path} does not describe a skyloc model ({exc}): {hint}") from None
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
    return write_json_atomic(model_sidecar_path(engine_path), sidecar.to_dict())


def read_engine_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    path = model_sidecar_path(engine_path)
    hint = "rebuild the engine on this device with `skyloc engine --onnx MODEL.onnx --out MODEL.engine`"
    data = _read_json(path, "engine sidecar", hint)
    if data.get("format") != ENGINE_FORMAT:
        raise SkylocError(f"{path} has format {data.get('format')!r}, expected {ENGINE_FORMAT!r}: {hint}")
    try:
        return EngineSidecar(**data)
    except TypeError as exc:
        raise SkylocError(f"{path} does not describe a skyloc engine ({exc}): {hint}") from None
