"""FP32 ONNX -> FP16 ONNX for TensorRT strongly typed builds.

A strongly typed network runs every layer in the type the ONNX gives it, so the precision has
to be decided here, not by builder flags. The I/O contract does not change: uint8 "image" in
(the input Cast now targets float16) and float32 "embedding" out. The backbone and the heads'
Linear layers run in FP16; the embedding head after them (per-head L2 norm, head weights,
concat, final L2 norm) stays FP32, because a sum of squares over 512 values overflows FP16's
65504 once features exceed ~11, and that part costs nothing.

Casts are inserted only where the two regions meet (once per tensor), so TensorRT sees a
clean graph; ONNX Runtime's own float16 converter casts around every blocked node instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from skyloc.core.atomic import atomic_path
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import ModelSidecar, read_model_sidecar, sha256_file, write_model_sidecar
from skyloc.export.uint8_input import cast_only_uint8_inputs

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0
# Inputs whose type the ONNX spec fixes to float32 whatever the data type (Resize scales), or
# which are typed independently of the data (Resize roi): left as they are.
KEEP_FLOAT_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
# Ops that only read a tensor's shape: any element type is fine.
TYPE_AGNOSTIC = {"Shape", "Size"}
PARITY_MIN_COSINE = 0.999


def embedding_head_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes downstream of the tensors that get L2-normalised (ReduceL2 inputs):
    the embedding head, kept in FP32."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    stack = [n.input[0] for n in graph.node if n.op_type == "ReduceL2" and n.input[0] in producer]
    keep: set[str] = set()
    while stack:
        for c in consumers.get(stack.pop(), []):
            if c.name not in keep:
                keep.add(c.name)
                stack.extend(c.output)
    return keep


def _to_half_array(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)


def _half_tensor(t: TensorProto, name: str | None = None) -> TensorProto:
    return numpy_helper.from_array(_to_half_array(numpy_helper.to_array(t)), name if name is not None else t.name)


def convert_model_to_fp16(model: onnx.ModelProto, keep_fp32: set[str] | None = None) -> onnx.ModelProto:
    """Return an FP16 copy of `model`: every float node except those named in `keep_fp32`
    (default: the embedding head) computes in float16; graph I/O types are unchanged."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    cast_only_uint8_inputs(model)  # an FP32 export from before the fix still gets a TensorRT-clean input
    g = model.graph
    for i, n in enumerate(g.node):
        if not n.name:
            n.name = f"node_{i}_{n.op_type}"
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise SkylocError(f"node {n.name} ({n.op_type}) has a subgraph; the FP16 converter does not handle control flow")
    keep = embedding_head_nodes(g) if keep_fp32 is None else set(keep_fp32)
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    inits = {t.name: t for t in g.initializer}

    new_type: dict[str, int] = {}
    for n in g.node:
        if n.name in keep:
            continue
        if n.op_type == "Cast":
            to = next(a for a in n.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = HALF
        for a in n.attribute:  # Constant / ConstantOfShape values
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                a.t.CopyFrom(_half_tensor(a.t, a.t.name))
        for o in n.output:
            if types.get(o) == FLOAT:
                new_type[o] = HALF

    def current(t: str) -> int | None:
        return new_type.get(t, types.get(t))

    converted: dict[tuple[str, int], str] = {}  # (tensor, wanted type) -> tensor name holding it
    extra_inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        for i, t in enumerate(n.input):
            if not t or types.get(t) != FLOAT or n.op_type in TYPE_AGNOSTIC:
                continue
            want = FLOAT if (n.name in keep or (n.op_type, i) in KEEP_FLOAT_INPUTS) else HALF
            if current(t) == want:
                continue
            key = (t, want)
            if key not in converted:
                suffix = "fp16" if want == HALF else "fp32"
                name = f"{t}__{suffix}"
                if t in inits:  # constants are converted once, not cast at run time
                    src = inits[t]
                    extra_inits.append(_half_tensor(src, name) if want == HALF else
                                       numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float32), name))
                else:
                    nodes.append(helper.make_node("Cast", [t], [name], name=f"cast_{suffix}_{t}", to=want))
                converted[key] = name
            n.input[i] = converted[key]
        nodes.append(n)

    for out in g.output:  # outputs keep their declared type
        if current(out.name) == HALF and types.get(out.name) == FLOAT:
            inner = f"{out.name}__fp16"
            for n in nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if t == out.name else t for t in n.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], name=f"cast_output_{out.name}", to=FLOAT))

    used = {t for n in nodes for t in n.input}
    initializers = [t for t in [*g.initializer, *extra_inits] if t.name in used]
    # Whole-FP16 initializers keep their own name: convert in place when no FP32 user is left.
    for idx, t in enumerate(initializers):
        if t.data_type == FLOAT and t.name in inits and (t.name, HALF) not in converted:
            users = [n for n in nodes if t.name in n.input]
            if users and all(n.name not in keep and n.op_type not in TYPE_AGNOSTIC
                             and all((n.op_type, i) not in KEEP_FLOAT_INPUTS for i, x in enumerate(n.input) if x == t.name)
                             for n in users):
                initializers[idx] = _half_tensor(t)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(initializers)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _parity(fp32_path: Path, fp16_path: Path, size: int, input_name: str) -> float:
    from skyloc.core.metrics import cosine_rows
    from skyloc.runtime.backends.onnxruntime_backend import cpu_session

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    a = cpu_session(fp32_path).run(None, {input_name: x})[0]
    b = cpu_session(fp16_path).run(None, {input_name: x})[0]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")  # overflow to Inf/NaN in FP16: refused by the caller
    return float(cosine_rows(a, b).min())


def to_fp16(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert an exported FP32 ONNX (with its sidecar) to FP16 at `out`; writes `out`'s sidecar
    (precision "fp16", same model_id). Returns `out`."""
    src, out = Path(src), Path(out)
    side = read_model_sidecar(src)
    if side.precision != "fp32":
        raise SkylocError(f"{src} has precision {side.precision}; FP16 conversion needs the FP32 export")
    if out.suffix != ".onnx" or out.resolve() == src.resolve():
        raise SkylocError(f"--out {out} must be a different file ending in .onnx")
    fp16 = convert_model_to_fp16(onnx.load(str(src)))
    onnx.helper.set_model_props(fp16, {**{p.key: p.value for p in fp16.metadata_props}, "skyloc.precision": "fp16"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # checked before it replaces a previous FP16 model
        onnx.save_model(fp16, str(tmp), save_as_external_data=False)
        cos = _parity(src, tmp, side.input.height, side.input.name)
        if not cos >= PARITY_MIN_COSINE:  # NaN fails too
            raise SkylocError(f"FP16 conversion of {src} drifts from it (min cosine {cos:.5f} on random images); "
                              f"the weights may overflow float16 — keep using the FP32 model ({out} not written)")
    d = side.to_dict()
    d.update(precision="fp16", onnx_sha256=sha256_file(out),
             extra={**side.extra, "fp32_onnx_sha256": side.onnx_sha256, "fp32_region": "embedding head (L2 norms, weights, concat)",
                    "fp16_vs_fp32_min_cosine_random": round(cos, 6)})
    write_model_sidecar(out, ModelSidecar(**d))
    return out
