"""Post-training INT8: one calibration run, two QDQ models (DESIGN.md section 4).

- `*.int8-ort.onnx` (U8S8): uint8 asymmetric activations, int8 per-channel weights, INT32 bias
  DQ as ONNX Runtime likes it; its CPU provider fuses DQ -> Conv -> Q into QLinearConv (AVX2/VNNI).
- `*.int8-trt.onnx` (S8S8): what TensorRT's explicit quantization accepts — int8 activations
  with zero point 0, symmetric per-channel weights, float biases (no INT32 DQ) — with the Q/DQ
  pairs where TensorRT's fusion rules expect them: on the *inputs* of Conv (activation and
  weight) and on one input of each residual Add, never on a Conv output. A Q/DQ between a Conv
  and its ReLU, or on the Conv-side input of the Add, forces TensorRT to run them as separate
  kernels with an extra rounding; without it TensorRT fuses Conv+bias+Add+ReLU and quantizes the
  fused output itself.

Calibrated once: the first `quantize_static` call computes the tensor ranges and saves them
(ORT's `calibration_cache_path`, JSON), the second reads them back without running the model.
The symmetric quantizer derives its scales from the same ranges (max |range|). onnxruntime
releases before that option (2026) calibrate twice on the same images, with a warning.

Only the backbone is quantized (Conv, residual Add; for ONNX Runtime also the pools). The block
pooling MatMul, block attention, head Linears and the L2 normalisations stay float: they cost
little and the embedding's direction is most sensitive there. The uint8 input, its cast and
normalisation stay as exported; the first Q sits on the normalised NCHW tensor.

Writes are all-or-nothing: everything goes to temporary names in the output folder and is moved
into place at the end, so an interrupted run leaves the previous INT8 models untouched.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime import __version__ as ort_version
from tqdm import tqdm

from skyloc.core.atomic import atomic_path, clean_stale_scratch, scratch_path
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import ModelSidecar, read_model_sidecar, sha256_file, write_model_sidecar
from skyloc.export.uint8_input import cast_only_uint8_inputs

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_OP_TYPES = ("Conv", "Add", "MaxPool", "AveragePool", "GlobalAveragePool")
# TensorRT: Q/DQ on the inputs of the compute ops and of the residual Add only (of those in
# op_types: by default the backbone's Conv and Add); TensorRT moves them across pooling itself
# and quantizes fused outputs without being told.
TRT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
CALIB_BATCH = 8
HAS_RANGE_CACHE = "calibration_cache_path" in inspect.signature(quantize_static).parameters
log = logging.getLogger(__name__)



@contextlib.contextmanager
def _ort_root_messages() -> Iterator[None]:
    """onnxruntime's quantizer warns "Please consider ... pre-processing" once per call with
    logging.warning(), i.e. on the root logger, and with no root handler that call installs one
    (logging's implicit basicConfig). While quantizing, those messages are dropped and an empty
    root gets a placeholder handler; both are removed after, so the root logger (level, handlers)
    is left exactly as the application set it."""
    root = logging.getLogger()
    drop = logging.Filter()
    drop.filter = lambda record: not str(record.msg).startswith("Please consider")  # type: ignore[method-assign]
    placeholder = logging.NullHandler() if not root.handlers else None
    root.addFilter(drop)
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if placeholder is not None:
            root.removeHandler(placeholder)


ORT_OPTIONS: dict = {}
TRT_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,  # int8 symmetric weights use [-127, 127]
    "QuantizeBias": False,  # no INT32 bias DequantizeLinear
    "DedicatedQDQPair": True,
    "OpTypesToExcludeOutputQuantization": list(TRT_OP_TYPES),  # no Q/DQ between Conv and ReLU/Add
}


class ArrayReader(CalibrationDataReader):
    """Feeds uint8 NHWC batches; supports ORT's strided collection so the calibrator holds one
    batch of intermediate tensors at a time (the histogram methods otherwise keep them all)."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIB_BATCH, progress: bool = False):
        self.images, self.input_name, self.batch = images, input_name, batch
        self.n_batches = (len(images) + batch - 1) // batch
        self.start, self.end, self.pos = 0, self.n_batches, 0
        self.bar = tqdm(total=self.n_batches, desc="calibrating", unit="batch", disable=not progress)

    def __len__(self) -> int:
        return self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, min(end_index, self.n_batches), start_index

    def rewind(self) -> None:
        self.pos = self.start

    def get_next(self) -> dict | None:
        if self.pos >= self.end:
            return None
        i = self.pos
        self.pos += 1
        self.bar.update(1)
        return {self.input_name: self.images[i * self.batch:(i + 1) * self.batch]}

    def close(self) -> None:
        self.bar.close()


def quantized_paths(model: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    stem = Path(model).stem
    out_dir = Path(out_dir)
    return {
        "int8-ort": out_dir / f"{stem}.int8-ort.onnx",
        "int8-trt": out_dir / f"{stem}.int8-trt.onnx",
        "ranges": out_dir / f"{stem}.calibration-ranges.json",
    }


def quantize_pair(model: str | os.PathLike, images: np.ndarray, out_dir: str | os.PathLike,
                  method: str = "minmax", op_types: Sequence[str] = DEFAULT_OP_TYPES,
                  progress: bool = True, extra_info: dict | None = None) -> dict[str, Path]:
    """Calibrate `model` (FP32 export with sidecar) on `images` (uint8 N,H,W,3) once and write
    the U8S8 and S8S8 QDQ models with their sidecars. Returns {"int8-ort", "int8-trt", "ranges"}."""
    model = Path(model)
    side = read_model_sidecar(model)
    if side.precision != "fp32":
        raise SkylocError(f"{model} has precision {side.precision}; calibrate the FP32 export")
    if method not in METHODS:
        raise SkylocError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    want = (side.input.height, side.input.width, 3)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8 or len(images) == 0:
        raise SkylocError(f"calibration images must be uint8 (N, {want[0]}, {want[1]}, 3), got {images.dtype} {images.shape}")
    paths = quantized_paths(model, out_dir)
    paths["ranges"].parent.mkdir(parents=True, exist_ok=True)
    clean_stale_scratch(paths["ranges"].parent)  # left by a killed calibrate
    # quantize_static writes where it is told: scratch files, so a kill never touches the previous models.
    scratch = {p: scratch_path(paths[p], ".onnx") for p in ("int8-ort", "int8-trt")}
    # A fresh cache name: a stale cache would silently skip calibration, and the previous run's
    # ranges stay in place (beside the models they made) until this run has succeeded.
    ranges_tmp = scratch_path(paths["ranges"], ".json")
    common = dict(quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                  op_types_to_quantize=list(op_types), calibrate_method=METHODS[method])
    if HAS_RANGE_CACHE:
        common["calibration_cache_path"] = ranges_tmp
    else:
        log.warning("onnxruntime %s has no calibration cache (added in 2026): calibrating twice, once per "
                    "model; upgrade onnxruntime to share one calibration", ort_version)
    reader = ArrayReader(images, side.input.name, progress=progress)
    strided = {"CalibStridedMinMax": 1}  # one batch of intermediate outputs in memory at a time
    quiet = _ort_root_messages()
    quiet.__enter__()
    try:
        quantize_static(str(model), str(scratch["int8-ort"]), reader, activation_type=QuantType.QUInt8,
                        extra_options={**ORT_OPTIONS, **strided}, **common)
        # With the cache this reads the saved ranges and runs no inference.
        second = None if HAS_RANGE_CACHE else reader
        quantize_static(str(model), str(scratch["int8-trt"]), second, activation_type=QuantType.QInt8,
                        extra_options={**TRT_OPTIONS, **({} if HAS_RANGE_CACHE else strided)},
                        **{**common, "op_types_to_quantize": [t for t in op_types if t in TRT_OP_TYPES]})
    finally:
        quiet.__exit__(None, None, None)
        reader.close()
    place_trt_qdq(scratch["int8-trt"])
    from skyloc.calibration.trt_lint import errors, lint_model

    violations = errors(lint_model(scratch["int8-trt"]))
    if violations:  # a quantizer change upstream; never ship a model TensorRT would refuse
        raise SkylocError("the S8S8 model breaks TensorRT's parser rules (an onnxruntime quantizer change?): "
                          + "; ".join(map(str, violations[:5])) + " — use the FP16 model for TensorRT meanwhile")
    if not HAS_RANGE_CACHE:
        del paths["ranges"]
    info = {"calibration_method": method, "calibration_images": int(len(images)),
            "calibration_ranges": paths["ranges"].name if HAS_RANGE_CACHE else None,
            "quantized_op_types": list(op_types),
            "fp32_onnx_sha256": side.onnx_sha256, **(extra_info or {})}
    for precision in ("int8-ort", "int8-trt"):
        _finish(paths[precision], side, precision, info, src=scratch[precision])
    if HAS_RANGE_CACHE and ranges_tmp.exists():
        os.replace(ranges_tmp, paths["ranges"])
    return paths


def place_trt_qdq(path: Path) -> int:
    """Rewrite the S8S8 model in place so each residual Add keeps a Q/DQ pair on one input only.

    ORT quantizes both Add inputs; TensorRT fuses Conv+Add(+ReLU) only when the Conv side is
    float and the other input carries the Q/DQ (its fusion guide: an extra pair "forces the
    separation"). Drops the pair on the first input produced by a Conv. Returns pairs removed."""
    proto = onnx.load(str(path))
    cast_only_uint8_inputs(proto)  # uint8 "image" read by its Cast only (an FP32 export from before the fix)
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    removed = 0
    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for i, t in enumerate(n.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            src = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if src is not None and src.op_type == "Conv":
                n.input[i] = q.input[0]
                removed += 1
                break
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    while True:  # drop the now-dangling Q/DQ nodes (DedicatedQDQPair: nothing else reads them)
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return removed


def _finish(path: Path, side: ModelSidecar, precision: str, info: dict, src: Path | None = None) -> None:
    proto = onnx.load(str(src or path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({"skyloc.model_id": side.model_id, "skyloc.variant": side.variant, "skyloc.precision": precision})
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    if src is not None:
        src.unlink(missing_ok=True)
    d = side.to_dict()
    scheme = ("U8S8: uint8 asymmetric activations, int8 per-channel weights" if precision == "int8-ort"
              else "S8S8: int8 symmetric activations (zero point 0), int8 per-channel weights in [-127, 127], float bias")
    d.update(precision=precision, onnx_sha256=sha256_file(path),
             extra={**side.extra, **info, "quantization": scheme})
    write_model_sidecar(path, ModelSidecar(**d))


def calibrate(model: str | os.PathLike, image_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              method: str = "minmax", num_images: int = 256, eval_data: str | os.PathLike | None = None,
              held_out: str | os.PathLike | None = None, compare: Sequence[str | os.PathLike] = (),
              progress: bool = True) -> dict[str, Path]:
    """The whole `skyloc calibrate`: select + manifest, preprocess, calibrate once, write both
    QDQ models with sidecars, then the accuracy report. Returns every path written, keyed
    "manifest", "int8-ort", "int8-trt", "ranges", "report_json", "report_md"."""
    from skyloc.calibration.report import accuracy_report
    from skyloc.calibration.select import select_images, write_manifest

    model, out_dir = Path(model), Path(out_dir)
    side = read_model_sidecar(model)
    if side.precision != "fp32":
        raise SkylocError(f"{model} has precision {side.precision}; calibrate the FP32 export")
    if method not in METHODS:
        raise SkylocError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    for other in compare:  # fail before the long part, not after it
        o = read_model_sidecar(other)
        if (o.model_id, o.variant) != (side.model_id, side.variant):
            raise SkylocError(f"--compare {other} (model {o.model_id}, {o.variant}) is not a build of {model} "
                              f"(model {side.model_id}, {side.variant})")
    selected = select_images(image_dirs, num_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_scratch(out_dir)  # a killed calibrate's scratch manifest folder
    # The manifest describes the models: it is written to scratch first (the models record its
    # sha256) and renamed into place only after both models are, so a calibrate killed midway
    # leaves the previous manifest beside the previous models.
    from skyloc.calibration.select import MANIFEST_NAME

    scratch_dir = scratch_path(out_dir / MANIFEST_NAME)
    scratch_dir.mkdir()
    try:
        pending = write_manifest(selected, scratch_dir, model=model.name, model_id=side.model_id, method=method)
        images = _load(selected, side, progress, "reading calibration images")
        paths = quantize_pair(model, images, out_dir, method=method, progress=progress,
                              extra_info={"calibration_manifest": MANIFEST_NAME,
                                          "calibration_manifest_sha256": sha256_file(pending)})
        manifest = out_dir / MANIFEST_NAME
        os.replace(pending, manifest)
    finally:
        for leftover in scratch_dir.glob("*"):
            leftover.unlink(missing_ok=True)
        scratch_dir.rmdir()
    note = "calibration images (not held out)"
    if held_out is not None:
        images = _load(select_images([held_out], num_images), side, progress, "reading held-out images")
        note = f"held-out images from {held_out}"
    artifacts = [paths["int8-ort"], paths["int8-trt"], *map(Path, compare)]
    jpath, mpath = accuracy_report(model, artifacts, images, out_dir, eval_data=eval_data,
                                   images_note=note, progress=progress)
    return {"manifest": manifest, **paths, "report_json": jpath, "report_md": mpath}


def _load(selected, side: ModelSidecar, progress: bool, desc: str) -> np.ndarray:
    from skyloc.calibration.select import load_batch

    paths = [s.path for s in selected]
    chunks = [load_batch(paths[i:i + 32], side.input)
              for i in tqdm(range(0, len(paths), 32), desc=desc, unit="chunk", disable=not progress)]
    return np.concatenate(chunks)
