"""TensorRT parser-constraint lint on hand-built graphs: each rule fires on a graph that breaks
it and names the node; the four points where TensorRT is more lenient than the old Q/DQ checker
pass; `skyloc check` exits 0/1. (The lint on every exported artifact: test_export.py and
test_calibration.py, which already build them.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from skyloc.calibration.trt_lint import errors, format_report, lint_model
from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError

OPSET = [helper.make_opsetid("", 18)]


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=OPSET)
    onnx.checker.check_model(m)
    return m


def _rules(model, severity: str = "error") -> set[tuple[str, str]]:
    return {(f.node, f.rule) for f in lint_model(model) if f.severity == severity}


def _edge_graph(cast_first: bool):
    """uint8 NHWC image -> float NCHW -> ReduceMean: the export's input stage, in both orders."""
    inp = [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    if cast_first:
        nodes = [helper.make_node("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
                 helper.make_node("Transpose", ["f"], ["t"], name="transpose", perm=[0, 3, 1, 2])]
    else:
        nodes = [helper.make_node("Transpose", ["image"], ["u"], name="transpose", perm=[0, 3, 1, 2]),
                 helper.make_node("Cast", ["u"], ["t"], name="cast", to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("ReduceMean", ["t", "axes"], ["y"], name="mean", keepdims=0))
    return _model(nodes, inp, out, [axes])


def test_uint8_intermediate_rejected_cast_first_passes() -> None:
    assert ("transpose", "uint8") in _rules(_edge_graph(cast_first=False))
    assert lint_model(_edge_graph(cast_first=True)) == []


def test_graph_wide_rules() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    # DOUBLE intermediate
    m = _model([helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
                helper.make_node("Cast", ["d"], ["y"], name="back", to=TensorProto.FLOAT)], [x], [y])
    assert ("to_double", "type") in _rules(m)
    # an op without a TensorRT importer
    m = _model([helper.make_node("Det", ["sq"], ["y"], name="det")],
               [helper.make_tensor_value_info("sq", TensorProto.FLOAT, ["batch", 4, 4])], [y])
    assert ("det", "unsupported-op") in _rules(m)
    # axes computed at run time (from the input's shape) instead of a constant
    m = _model([helper.make_node("Shape", ["x"], ["s"], name="shape", start=1),
                helper.make_node("Sub", ["s", "one"], ["ax"], name="sub"),
                helper.make_node("ReduceSum", ["x", "ax"], ["y"], name="sum", keepdims=1)], [x], [y],
               [numpy_helper.from_array(np.array([3], np.int64), "one")])
    assert ("sum", "dynamic-shape") in _rules(m)
    # a dynamic non-batch input dimension: the engine's profile covers the batch only
    m = _model([helper.make_node("Relu", ["z"], ["y"], name="relu")],
               [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "width"])], [y])
    assert ("z", "dynamic-shape") in _rules(m)
    # float-only math on an integer tensor, and logic on floats
    m = _model([helper.make_node("Sqrt", ["i"], ["y"], name="sqrt")],
               [helper.make_tensor_value_info("i", TensorProto.INT32, ["batch", 4])],
               [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 4])])
    assert ("sqrt", "type") in _rules(m)


# --- Q/DQ ------------------------------------------------------------------------------------

def _qdq_graph(q_zp=np.int8(0), w=None, w_axis=0, bias_int32=False, scale=0.02, act_scale=None, drop_zp=False,
               zp_shape=None, scale_shape=None, scale_from_constant=False, relu_after_conv_q=False):
    """x -> Q -> DQ -> Conv(W = DQ(int8 weights) [, bias]) -> y, with knobs to break (or bend) rules."""
    w = np.array(np.arange(-8, 8).reshape(2, 2, 2, 2), np.int8) if w is None else w
    sc = np.array(scale if act_scale is None else act_scale, np.float32)
    if scale_shape is not None:
        sc = sc.reshape(scale_shape)
    zp = np.array(q_zp)
    if zp_shape is not None:
        zp = zp.reshape(zp_shape)
    inits = [numpy_helper.from_array(zp, "x_zp"), numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(w.shape[w_axis], 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(w.shape[w_axis], np.int8), "w_zp")]
    nodes = []
    if scale_from_constant:
        nodes.append(helper.make_node("Constant", [], ["x_scale"], name="scale_const", value_float=float(scale)))
    else:
        inits.append(numpy_helper.from_array(sc, "x_scale"))
    qin = ["x", "x_scale"] if drop_zp else ["x", "x_scale", "x_zp"]
    nodes += [
        helper.make_node("QuantizeLinear", qin, ["xq"], name="q_input"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale"] + ([] if drop_zp else ["x_zp"]), ["xd"], name="dq_input"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_weight", axis=w_axis),
    ]
    conv_in = ["xd", "w"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.array([5, -3], np.int32), "b_q"),
                  numpy_helper.from_array(np.array([2e-4, 2e-4], np.float32), "b_scale"),
                  numpy_helper.from_array(np.array([0, 0], np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dq_bias", axis=0))
        conv_in.append("b")
    if relu_after_conv_q:  # Conv -> Q -> DQ -> Relu: the placement that blocks Conv+ReLU fusion
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "c_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "c_zp")]
        nodes += [helper.make_node("Conv", conv_in, ["c"], name="conv"),
                  helper.make_node("QuantizeLinear", ["c", "c_scale", "c_zp"], ["cq"], name="q_conv_out"),
                  helper.make_node("DequantizeLinear", ["cq", "c_scale", "c_zp"], ["cd"], name="dq_conv_out"),
                  helper.make_node("Relu", ["cd"], ["y"], name="relu")]
    else:
        nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def test_symmetric_qdq_graph_passes() -> None:
    assert lint_model(_qdq_graph()) == []


def test_each_qdq_violation_is_named() -> None:
    assert ("q_input", "zero-point") in _rules(_qdq_graph(q_zp=np.int8(3)))
    assert ("dq_input", "zero-point") in _rules(_qdq_graph(q_zp=np.int8(3)))
    assert ("dq_bias", "int32-bias") in _rules(_qdq_graph(bias_int32=True))
    uint8 = _rules(_qdq_graph(q_zp=np.uint8(128)))  # asymmetric uint8 activations (U8S8)
    assert {("q_input", "type"), ("q_input", "zero-point"), ("q_input", "uint8")} <= uint8
    assert ("dq_weight", "axis") in _rules(_qdq_graph(w_axis=1))  # Conv weights need axis 0
    assert ("q_input", "scale") in _rules(_qdq_graph(scale=0.0))
    assert ("q_input", "scale") in _rules(_qdq_graph(scale=float("nan")))
    assert ("q_input", "axis") in _rules(_qdq_graph(act_scale=[0.1, 0.2]))  # per-channel activation
    m = _qdq_graph()  # scale fed as a graph input: not a build-time constant
    m.graph.input.append(helper.make_tensor_value_info("s_in", TensorProto.FLOAT, []))
    m.graph.node[0].input[1] = "s_in"
    assert ("q_input", "scale") in _rules(m)
    fusion = _qdq_graph(relu_after_conv_q=True)
    assert ("q_conv_out", "fusion") in _rules(fusion, "warning") and not errors(lint_model(fusion))


def test_matches_tensorrt_on_the_four_lenient_points() -> None:
    """What TensorRT's parser accepts and the old checker refused."""
    assert errors(lint_model(_qdq_graph(drop_zp=True))) == []  # missing zero point: INT8 in TensorRT
    w = np.array(np.arange(-8, 8).reshape(2, 2, 2, 2), np.int8)
    w[0, 0, 0, 0] = -128
    assert errors(lint_model(_qdq_graph(w=w))) == []  # weight -128
    assert errors(lint_model(_qdq_graph(scale_shape=(1,), zp_shape=()))) == []  # scale (1,), zero point ()
    assert errors(lint_model(_qdq_graph(scale_from_constant=True))) == []  # Constant(value_float) scale


def test_check_cli(tmp_path: Path, capsys) -> None:
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_edge_graph(cast_first=True), str(good))
    onnx.save(_qdq_graph(bias_int32=True), str(bad))
    assert skyloc(["check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert skyloc(["check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "dq_bias" in out and "int32-bias" in out
    warn = tmp_path / "warn.onnx"
    onnx.save(_qdq_graph(relu_after_conv_q=True), str(warn))
    assert skyloc(["check", str(warn)]) == 0 and skyloc(["check", "--strict", str(warn)]) == 1
    assert skyloc(["calibrate", "--check-trt", str(bad)]) == 1  # the older spelling
    assert skyloc(["check", str(tmp_path / "missing.onnx")]) == 2
    with pytest.raises(SkylocError, match="not found"):
        lint_model(tmp_path / "missing.onnx")
    assert "OK" in format_report(good, lint_model(good))
