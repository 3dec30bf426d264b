"""Static check that a QDQ ONNX follows TensorRT's explicit-quantization rules.

TensorRT quantization is symmetric INT8 only: every QuantizeLinear / DequantizeLinear must
have a build-time constant, strictly positive scale; a zero point that is constant, int8 and 0
(a missing zero point means uint8 in ONNX); per-channel scales only on weights, along the
output-channel axis of the layer that uses them; no INT32 DequantizeLinear (ONNX Runtime's
quantized bias); and int8 weights inside [-127, 127] (-128 has no symmetric counterpart).
Each violation names the node, so the offending part of the graph can be found.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from skyloc.runtime.errors import SkylocError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Violation:
    node: str
    op_type: str
    rule: str  # zero-point | type | weight-128 | int32-bias | axis | scale
    message: str

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
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _types_and_ranks(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # best effort: a broken graph still gets the constant-based checks
        pass
    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in g.initializer})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    return types, ranks


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t) if t else "unknown"


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


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


def check_trt_rules(model: str | os.PathLike | onnx.ModelProto) -> list[Violation]:
    """All TensorRT QDQ-rule violations in `model` (empty list: TensorRT-ready)."""
    proto = _load(model)
    g = proto.graph
    consts = _constants(g)
    types, ranks = _types_and_ranks(proto)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    found: list[Violation] = []
    for idx, n in enumerate(g.node):
        if n.op_type not in QDQ_OPS:
            continue
        name = n.name or f"<unnamed node #{idx}>"

        def bad(rule: str, msg: str) -> None:
            found.append(Violation(name, n.op_type, rule, msg))

        x = n.input[0]
        scale_name = n.input[1] if len(n.input) > 1 else ""
        zp_name = n.input[2] if len(n.input) > 2 else ""
        # Scale: constant, float, strictly positive and finite.
        scale = consts.get(scale_name)
        if scale is None:
            bad("scale", f"scale {scale_name!r} is not a build-time constant (initializer or Constant)")
        else:
            if scale.dtype.kind != "f":
                bad("type", f"scale {scale_name!r} has dtype {scale.dtype}, expected float")
            elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                bad("scale", f"scale {scale_name!r} has non-positive or non-finite values (min {float(np.min(scale)):.3g})")
            if scale.ndim > 1:
                bad("axis", f"scale {scale_name!r} has shape {scale.shape}: block quantization is not INT8 TensorRT")
        # An INT32 DQ is ORT's quantized bias: one violation says it all (its zero point is int32 too).
        int32_bias = n.op_type == "DequantizeLinear" and (
            (x in consts and consts[x].dtype == np.int32) or types.get(x) == TensorProto.INT32)
        # Zero point: constant int8 zeros. ONNX's default without one is uint8.
        if zp_name and not int32_bias:
            zp = consts.get(zp_name)
            if zp is None:
                bad("zero-point", f"zero point {zp_name!r} is not a constant")
            else:
                if zp.dtype != np.int8:
                    bad("type", f"zero point {zp_name!r} is {zp.dtype}: TensorRT needs int8 (symmetric) quantization")
                if np.any(zp != 0):
                    nz = zp[zp != 0]
                    bad("zero-point", f"zero point {zp_name!r} is not 0 (asymmetric; e.g. {int(nz.flat[0])})")
                if scale is not None and zp.shape != scale.shape:
                    bad("axis", f"zero point shape {zp.shape} differs from scale shape {scale.shape}")
        elif n.op_type == "QuantizeLinear":
            out_t = _attr(n, "output_dtype", 0)
            if out_t != TensorProto.INT8:
                bad("type", "no zero point: the output type defaults to uint8; give an int8 zero point of 0")
        # Data type of the quantized side.
        if n.op_type == "DequantizeLinear":
            xt = consts[x].dtype if x in consts else None
            et = types.get(x, 0)
            if int32_bias:
                bad("int32-bias", f"input {x!r} is INT32 (a quantized bias); TensorRT has no INT32 dequantize: "
                    "keep biases in float (ORT extra option QuantizeBias=False)")
            elif (xt is not None and xt != np.int8) or (xt is None and et not in (0, TensorProto.INT8)):
                tname = str(xt) if xt is not None else _type_name(et)
                bad("type", f"input {x!r} is {tname}, expected int8")
            if x in consts and consts[x].dtype == np.int8 and np.any(consts[x] == -128):
                bad("weight-128", f"int8 weight {x!r} contains -128 ({int(np.sum(consts[x] == -128))} values); "
                    "symmetric weights must lie in [-127, 127]")
        else:
            if x in types and types[x] not in FLOAT_TYPES:
                bad("type", f"input {x!r} is {_type_name(types[x])}, expected a float tensor")
        # Per-tensor vs per-channel.
        if scale is not None and scale.ndim == 1 and scale.size > 1:
            rank = consts[x].ndim if x in consts else ranks.get(x)
            axis = int(_attr(n, "axis", 1))
            is_weight = x in consts or (n.op_type == "DequantizeLinear" and _is_const_chain(x, g, consts))
            if rank is None:
                bad("axis", f"per-channel scale on {x!r} whose rank is unknown")
                continue
            if not -rank <= axis < rank:
                bad("axis", f"axis {axis} out of range for rank-{rank} input {x!r}")
                continue
            axis %= rank
            dim = consts[x].shape[axis] if x in consts else None
            if dim is not None and dim != scale.size:
                bad("axis", f"per-channel scale has {scale.size} values but {x!r} has {dim} along axis {axis}")
            if not is_weight:
                bad("axis", f"per-channel scale on activation {x!r}: TensorRT quantizes activations per tensor")
            elif n.op_type == "DequantizeLinear":
                for c, i in consumers.get(n.output[0], []):
                    want = _weight_axis(c, i, rank)
                    if want is not None and want != axis:
                        bad("axis", f"per-channel axis {axis} but {c.op_type} {c.name!r} needs its output-channel "
                            f"axis {want}")
    return found


def _is_const_chain(tensor: str, graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> bool:
    """True when `tensor` is computed from constants only (e.g. a QuantizeLinear of a weight)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t in consts or not t or t in seen:
            continue
        seen.add(t)
        p = producer.get(t)
        if p is None:
            return False
        stack.extend(p.input)
    return True


def format_report(path: str | os.PathLike, violations: list[Violation]) -> str:
    if not violations:
        return f"{path}: OK — no QuantizeLinear/DequantizeLinear node breaks the TensorRT INT8 rules"
    lines = [f"{path}: {len(violations)} TensorRT rule violation(s):"]
    lines += [f"  {v}" for v in violations]
    return "\n".join(lines)
