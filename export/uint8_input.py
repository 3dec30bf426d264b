"""Every UINT8 graph input is read by a Cast and by nothing else (TensorRT's rule).

TensorRT takes UINT8 only as a network input or output, and an NVIDIA maintainer states that a
UINT8 input must feed directly into a Cast (NVIDIA/TensorRT#3985): its Shape layer, for one,
has no UINT8 implementation. The torch.export optimizer rewrites `Shape(Cast(image))` as
`Shape(image)` (the shapes are equal), which gives every exported graph a Shape node on the
uint8 input. The shape of the Cast's output is the same tensor shape, so shape-only readers are
moved onto it; any other reader is refused, since it would compute on bytes.

Applied by every writer of a TensorRT artifact (FP32 export, FP16 conversion, S8S8 INT8), so
an ONNX exported before this fix is repaired when it is converted or calibrated.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from skyloc.core.errors import SkylocError

# Ops that read only their input's shape: reading the Cast output instead changes nothing.
SHAPE_ONLY = {"Shape", "Size"}


def uint8_inputs(graph: onnx.GraphProto) -> list[str]:
    inits = {t.name for t in graph.initializer}
    return [v.name for v in graph.input
            if v.name not in inits and v.type.tensor_type.elem_type == TensorProto.UINT8]


def cast_only_uint8_inputs(model: onnx.ModelProto) -> int:
    """Rewire, in place, every shape-only reader of a UINT8 graph input onto that input's Cast.
    Returns the number of readers moved; SkylocError when an input has a reader that is neither
    a Cast nor shape-only (the graph computes on uint8 and has to be exported differently)."""
    g = model.graph
    moved = 0
    for name in uint8_inputs(g):
        readers = [n for n in g.node if name in n.input]
        casts = [n for n in readers if n.op_type == "Cast" and n.domain in ("", "ai.onnx")]
        others = [n for n in readers if n not in casts]
        bad = [n for n in others if n.op_type not in SHAPE_ONLY or n.domain not in ("", "ai.onnx")]
        if bad:
            raise SkylocError(
                f"the graph's uint8 input {name!r} is read by {', '.join(f'{n.op_type} {n.name!r}' for n in bad)}: "
                "TensorRT needs every uint8 input to go straight into a Cast; cast to float first in the model")
        if not others:
            continue
        if not casts:  # only shape readers: give them a Cast to read (TensorRT drops the dead compute)
            cast_out = f"{name}__as_float"
            g.node.insert(0, helper.make_node("Cast", [name], [cast_out], name=f"cast_{name}_for_shape",
                                              to=TensorProto.FLOAT))
        else:
            cast_out = casts[0].output[0]
        for n in others:
            n.input[:] = [cast_out if t == name else t for t in n.input]
            moved += 1
    if moved:
        _topological_sort(g)
    return moved


def _topological_sort(g: onnx.GraphProto) -> None:
    """Rewired readers may now precede their new producer in the node list; ONNX requires the
    list in topological order."""
    ready = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise SkylocError(f"graph has a cycle or a dangling input at node {rest[0].name!r}; re-export the model")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)
