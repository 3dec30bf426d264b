"""Static lint of a whole ONNX graph against TensorRT's ONNX-parser constraints (TensorRT 10/11).

Run on every artifact `export` and `calibrate` write (tests), by `skyloc check MODEL.onnx`, and
on a parse failure in `skyloc engine`. Rules, each finding naming the node:

- `uint8`: UINT8 only as a network input or output (the parser refuses a UINT8 intermediate;
  a uint8 Transpose ahead of the input Cast made every skyloc export unbuildable), and a UINT8
  input read by nothing but Casts (NVIDIA/TensorRT#3985: e.g. the Shape layer has no UINT8).
- `type`: the element types TensorRT's operator support matrix allows per op (no DOUBLE tensors,
  float-only math ops, BOOL-only logic, INT8/FP8/INT4 only around Q/DQ).
- `unsupported-op`: ops the parser has no importer for (plugins would be needed).
- `dynamic-shape`: inputs the parser needs as build-time constants (Reduce/Squeeze/Unsqueeze
  axes, TopK K, ...) and graph inputs with a dynamic non-batch dimension (skyloc builds one
  optimisation profile over the batch alone).
- Q/DQ (`scale`, `zero-point`, `int32-bias`, `axis`): constant, positive, finite scales; a
  constant zero point of 0 in INT8 (or none: TensorRT then quantizes to INT8); per-channel scales
  only on weights along the consumer's output-channel axis; no INT32 DequantizeLinear (ORT's
  quantized bias). Matching TensorRT, these are *not* findings: a missing zero point, an int8
  weight of -128, a scale of shape (1,) with a zero point of shape (), a scale from
  `Constant(value_float)`.
- `fusion` (warning): a Q/DQ pair between a Conv/Gemm/MatMul and its activation keeps TensorRT
  from fusing them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from skyloc.calibration.trt_ops import (
    FLOATS,
    INTS,
    QUANT,
    ANY,
    QDQ_OPS,
    FLOAT_OPS,
    LOGIC_OPS,
    OTHER_OPS,
    UNSUPPORTED_OPS,
    CONSTANT_INPUTS,
    ACTIVATIONS,
    COMPUTE,
)
from skyloc.core.errors import SkylocError

T = TensorProto

@dataclass(frozen=True)
class Finding:
    node: str
    op_type: str
    rule: str  # uint8 | type | unsupported-op | dynamic-shape | scale | zero-point | int32-bias | axis | fusion
    message: str
    severity: str = "error"  # "error": TensorRT refuses the graph; "warning": it builds, worse

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}) [{self.rule}]: {self.message}"


def _load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise SkylocError(f"model {path} not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise SkylocError(f"cannot read {path} as ONNX ({type(exc).__name__}: {exc})") from None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:  # value, or the scalar/list forms (value_float, value_ints, ...)
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                consts[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats"):
                consts[n.output[0]] = np.array(onnx.helper.get_attribute_value(a), np.float32)
            elif a.name in ("value_int", "value_ints"):
                consts[n.output[0]] = np.array(onnx.helper.get_attribute_value(a), np.int64)
    return consts


def _value_infos(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # best effort: a broken graph still gets the constant-based checks
        pass
    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in g.initializer})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    return types, ranks


def _tname(t: int) -> str:
    return T.DataType.Name(t) if t else "unknown"


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Graph:
    def __init__(self, proto: onnx.ModelProto) -> None:
        g = proto.graph
        self.g = g
        self.consts = _constants(g)
        self.types, self.ranks = _value_infos(proto)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for i, t in enumerate(n.input):
                self.consumers.setdefault(t, []).append((n, i))
        self.outputs = {o.name for o in g.output}
        self.inputs = {i.name for i in g.input} - set(self.consts)
        self._const_memo: dict[str, bool] = {}

    def is_const(self, tensor: str) -> bool:
        """Computed from constants only (e.g. a QuantizeLinear of a weight, a Shape-free chain)."""
        if tensor in self._const_memo:
            return self._const_memo[tensor]
        seen, stack, ok = set(), [tensor], True
        while stack and ok:
            t = stack.pop()
            if not t or t in self.consts or t in seen:
                continue
            seen.add(t)
            p = self.producer.get(t)
            if p is None or p.op_type == "Shape":  # graph input, or shape of a dynamic tensor
                ok = False
            else:
                stack.extend(p.input)
        self._const_memo[tensor] = ok
        return ok


def lint_model(model: str | os.PathLike | onnx.ModelProto, profile_dims: tuple[int, ...] = ()) -> list[Finding]:
    """Every TensorRT parser-constraint finding in `model` (no errors: TensorRT can build it).
    `profile_dims`: input dimensions besides the batch that the engine's profile covers (the
    learned matcher's H and W), so they may be dynamic."""
    G = _Graph(_load(model))
    found: list[Finding] = []
    found += _lint_io(G, set(profile_dims))
    for idx, n in enumerate(G.g.node):
        name = n.name or f"<unnamed node #{idx}>"
        out: list[Finding] = []

        def bad(rule: str, msg: str, severity: str = "error") -> None:
            out.append(Finding(name, n.op_type, rule, msg, severity))

        _lint_node(G, n, bad)
        if n.op_type in QDQ_OPS:
            _lint_qdq(G, n, bad)
        found += out
    return found


def _lint_io(G: _Graph, profile_dims: set[int]) -> list[Finding]:
    found = []
    for v in G.g.input:
        if v.name in G.consts:
            continue
        t = v.type.tensor_type
        if t.elem_type and t.elem_type not in ANY | {T.UINT8}:
            found.append(Finding(v.name, "graph input", "type", f"input type {_tname(t.elem_type)} is not a TensorRT I/O type"))
        if t.elem_type == T.UINT8:  # the parser checks node outputs only; TensorRT fails at build time
            for c, _ in G.consumers.get(v.name, []):
                if c.op_type != "Cast" or c.domain not in ("", "ai.onnx"):
                    found.append(Finding(c.name or "<unnamed>", c.op_type, "uint8", f"reads the UINT8 input {v.name!r}: "
                                         "TensorRT takes a UINT8 input only into a Cast (take shapes after the Cast)"))
        dims = list(t.shape.dim)
        for k, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") and k not in profile_dims:
                found.append(Finding(v.name, "graph input", "dynamic-shape",
                                     f"dimension {k} is dynamic ({d.dim_param or '?'}): only the batch dimension may "
                                     "be, since the engine gets one optimisation profile over the batch"))
    return found


def _lint_node(G: _Graph, n: onnx.NodeProto, bad) -> None:
    op = n.op_type
    if n.domain not in ("", "ai.onnx"):
        bad("unsupported-op", f"custom-domain op {n.domain}::{op} needs a TensorRT plugin")
        return
    if op in UNSUPPORTED_OPS:
        bad("unsupported-op", f"{op} has no TensorRT ONNX importer")
        return
    if op not in FLOAT_OPS | LOGIC_OPS | OTHER_OPS:
        bad("unsupported-op", f"{op} is not in the TensorRT operator support matrix this lint knows; "
            "check it with trtexec", severity="warning")
    # UINT8 only at the network boundary. A QuantizeLinear without a zero point is typed uint8 by
    # ONNX but imported as INT8 by TensorRT, so it is not a uint8 tensor there.
    for o in n.output:
        if o and G.types.get(o) == T.UINT8 and o not in G.outputs and op != "Constant":
            if op == "QuantizeLinear" and len(n.input) < 3:
                continue
            bad("uint8", f"output {o!r} is UINT8, which TensorRT allows only as a network input or output "
                "(cast uint8 inputs to float first; U8S8 Q/DQ models are for ONNX Runtime)")
    for o in n.output:
        if o and G.types.get(o) == T.DOUBLE:
            bad("type", f"output {o!r} is DOUBLE: TensorRT has no float64 tensors")
    if op in FLOAT_OPS:
        for t in [n.input[0]] if n.input else []:
            tt = G.types.get(t)
            if tt and tt not in FLOATS and not (tt in QUANT and op in COMPUTE):
                bad("type", f"input {t!r} is {_tname(tt)}: TensorRT runs {op} in FP32/FP16/BF16 only")
    elif op in LOGIC_OPS:
        for t in n.input:
            tt = G.types.get(t)
            if tt and tt != T.BOOL:
                bad("type", f"input {t!r} is {_tname(tt)}: TensorRT's {op} takes BOOL")
    for (cop, i), what in CONSTANT_INPUTS.items():
        if op == cop and len(n.input) > i and n.input[i] and not G.is_const(n.input[i]):
            bad("dynamic-shape", f"input {i} ({what}) {n.input[i]!r} must be a build-time constant for TensorRT")
    if op == "MaxPool" and len(n.output) > 1 and n.output[1]:
        bad("type", "MaxPool's Indices output is not supported by TensorRT")


def _weight_axis(consumer: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """Output-channel axis TensorRT expects for per-channel weights of `consumer`, or None."""
    if input_index != 1:
        return None
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul":
        return rank - 1
    return None


def _lint_qdq(G: _Graph, n: onnx.NodeProto, bad) -> None:
    consts = G.consts
    x = n.input[0]
    scale_name = n.input[1] if len(n.input) > 1 else ""
    zp_name = n.input[2] if len(n.input) > 2 else ""
    scale = consts.get(scale_name)
    if scale is None:
        bad("scale", f"scale {scale_name!r} is not a build-time constant (initializer or Constant)")
    elif scale.dtype.kind != "f":
        bad("type", f"scale {scale_name!r} has dtype {scale.dtype}, expected float")
    else:
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            bad("scale", f"scale {scale_name!r} has non-positive or non-finite values (min {float(np.min(scale)):.3g})")
        if scale.ndim > 1:
            bad("axis", f"scale {scale_name!r} has shape {scale.shape}: block quantization is not INT8 TensorRT")
    x_type = consts[x].dtype if x in consts else None
    int32_bias = n.op_type == "DequantizeLinear" and (x_type == np.int32 or G.types.get(x) == T.INT32)
    if int32_bias:
        bad("int32-bias", f"input {x!r} is INT32 (a quantized bias); TensorRT has no INT32 dequantize: "
            "keep biases in float (ORT extra option QuantizeBias=False)")
        return
    if zp_name:
        zp = consts.get(zp_name)
        if zp is None:
            bad("zero-point", f"zero point {zp_name!r} is not a constant")
        else:
            if zp.dtype != np.int8:
                bad("type", f"zero point {zp_name!r} is {zp.dtype}: TensorRT quantizes to INT8 (symmetric), "
                    "UINT8 only on DLA")
            if np.any(zp != 0):
                nz = zp[zp != 0]
                bad("zero-point", f"zero point {zp_name!r} is not 0 (asymmetric; e.g. {int(nz.flat[0])})")
            if scale is not None and zp.size != scale.size:
                bad("axis", f"zero point shape {zp.shape} does not match scale shape {scale.shape}")
    if n.op_type == "DequantizeLinear":
        et = G.types.get(x, 0)
        from_q = G.producer.get(x) is not None and G.producer[x].op_type == "QuantizeLinear"
        if x_type is not None and x_type not in (np.int8,):
            bad("type", f"input {x!r} is {x_type}, expected int8")
        elif x_type is None and et and et not in QUANT and not (from_q and et == T.UINT8 and not zp_name):
            bad("type", f"input {x!r} is {_tname(et)}, expected INT8")
    else:
        et = G.types.get(x)
        if et and et not in FLOATS:
            bad("type", f"input {x!r} is {_tname(et)}, expected a float tensor")
        _lint_fusion(G, n, bad)
    if scale is not None and scale.ndim == 1 and scale.size > 1:
        rank = consts[x].ndim if x in consts else G.ranks.get(x)
        axis = int(_attr(n, "axis", 1))
        if rank is None:
            bad("axis", f"per-channel scale on {x!r} whose rank is unknown")
            return
        if not -rank <= axis < rank:
            bad("axis", f"axis {axis} out of range for rank-{rank} input {x!r}")
            return
        axis %= rank
        if x in consts and consts[x].shape[axis] != scale.size:
            bad("axis", f"per-channel scale has {scale.size} values but {x!r} has {consts[x].shape[axis]} along axis {axis}")
        if not G.is_const(x):
            bad("axis", f"per-channel scale on activation {x!r}: TensorRT quantizes activations per tensor")
        elif n.op_type == "DequantizeLinear":
            for c, i in G.consumers.get(n.output[0], []):
                want = _weight_axis(c, i, rank)
                if want is not None and want != axis:
                    bad("axis", f"per-channel axis {axis} but {c.op_type} {c.name!r} needs its output-channel axis {want}")


def _lint_fusion(G: _Graph, q: onnx.NodeProto, bad) -> None:
    """Conv -> Q -> DQ -> activation: the pair splits what TensorRT would fuse into one kernel."""
    p = G.producer.get(q.input[0])
    if p is None or p.op_type not in COMPUTE:
        return
    for dq, _ in G.consumers.get(q.output[0], []):
        if dq.op_type != "DequantizeLinear":
            continue
        for c, _ in G.consumers.get(dq.output[0], []):
            if c.op_type in ACTIVATIONS:
                bad("fusion", f"Q/DQ between {p.op_type} {p.name!r} and {c.op_type} {c.name!r} keeps TensorRT "
                    "from fusing them; quantize the activation's output instead", severity="warning")
                return


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def format_report(path: str | os.PathLike, findings: list[Finding]) -> str:
    errs, warns = errors(findings), [f for f in findings if f.severity != "error"]
    if not errs:
        head = f"{path}: OK — TensorRT's ONNX parser constraints hold"
        return "\n".join([head + (f" ({len(warns)} warning(s))" if warns else "")] + [f"  warning: {w}" for w in warns])
    lines = [f"{path}: {len(errs)} TensorRT error(s) — the engine build would fail:"]
    lines += [f"  {e}" for e in errs] + [f"  warning: {w}" for w in warns]
    return "\n".join(lines)
