"""TensorRT's ONNX operator support, as the lint in calibration.trt_lint needs it: which ops the
parser imports, in which element types, and which inputs it needs as build-time constants
(from the onnx-tensorrt operator support matrix, TensorRT 10/11)."""
from __future__ import annotations

from onnx import TensorProto

T = TensorProto
FLOATS = {T.FLOAT, T.FLOAT16, T.BFLOAT16}
INTS = {T.INT32, T.INT64}
QUANT = {T.INT8, T.FLOAT8E4M3FN, T.INT4}
ANY = FLOATS | INTS | {T.INT8, T.BOOL}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Float math: TensorRT runs these in FP32/FP16/BF16 only (operator support matrix).
FLOAT_OPS = {
    "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu",
    "Conv", "ConvTranspose", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization",
    "LpPool", "LRN", "MatMul", "MaxPool", "MeanVarianceNormalization", "Mish", "Pow", "PRelu", "Reciprocal",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMean", "ReduceSumSquare", "Relu",
    "Resize", "Round", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan",
    "Tanh", "ThresholdedRelu", "Upsample",
}
LOGIC_OPS = {"And", "Or", "Xor", "Not"}
# Everything else the parser imports (data movement, int/float arithmetic, comparisons, control flow).
OTHER_OPS = {
    "Abs", "Add", "ArgMax", "ArgMin", "Cast", "CastLike", "Clip", "Concat", "Constant", "ConstantOfShape",
    "CumSum", "DepthToSpace", "Div", "Dropout", "Einsum", "Equal", "Expand", "EyeLike", "Flatten", "Gather",
    "GatherElements", "GatherND", "Greater", "GreaterOrEqual", "Identity", "If", "IsInf", "IsNaN", "Less",
    "LessOrEqual", "Loop", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
    "OneHot", "Pad", "Range", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "Reshape", "RoiAlign",
    "Scan", "ScatterElements", "ScatterND", "Shape", "Shrink", "Sign", "Size", "Slice", "SpaceToDepth",
    "Split", "Squeeze", "Sub", "Sum", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where",
    "QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike", "ReverseSequence", "GRU", "LSTM", "RNN", "Hardmax", "BitwiseAnd", "BitwiseOr",
    "BitwiseNot", "BitwiseXor",
}
UNSUPPORTED_OPS = {
    "BitShift", "Bernoulli", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "STFT", "StringNormalizer", "TfIdfVectorizer", "Unique",
}
# (op, input index) the parser needs as a build-time constant.
CONSTANT_INPUTS = {
    **{(op, 1): "axes" for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                  "Squeeze", "Unsqueeze")},
    ("CumSum", 1): "axis", ("TopK", 1): "K", ("Slice", 3): "axes",
}
ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
               "Softplus", "Gelu", "Mish"}
COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
