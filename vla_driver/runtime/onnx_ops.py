"""Which operators of an ONNX graph TensorRT's ONNX parser cannot take: a check that needs only ``onnx``, so
a graph is vetted on any machine before it goes to the car."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx

# Our own list, made from the operator support matrix of onnx-tensorrt (docs/operators.md, TensorRT 10.x).
# Restrictions per operator (e.g. "axes must be an initializer") are not checked here; the parser reports them.
TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Opset 23/24 operators that only the newest TensorRT 10 parsers take (10.15 added RMSNormalization,
# RotaryEmbedding and TensorScatter); the car's TensorRT may be older, so they count as unsupported by default.
TRT_ONNX_RECENT_OPS = frozenset({"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter"})
_DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _load_onnx(model):
    if isinstance(model, str | Path):
        return onnx.load(str(model), load_external_data=False)
    return model


def _graph_op_types(graph, functions: Mapping) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, looking inside subgraphs (If/Loop/Scan) and model-local functions."""
    found: set[tuple[str, str]] = set()
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in functions:
            found |= _graph_op_types(functions[key], {k: v for k, v in functions.items() if k != key})
        else:
            found.add(("" if node.domain in _DEFAULT_DOMAINS else node.domain, node.op_type))
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= _graph_op_types(sub, functions)
    return found


def onnx_op_types(model) -> set[tuple[str, str]]:
    model = _load_onnx(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    return _graph_op_types(model.graph, functions)


def unsupported_ops(model, allow_recent: bool = False) -> list[str]:
    """Operators of ``model`` (ModelProto or path) that TensorRT's ONNX parser does not take, sorted.

    Non-default domains come back as ``"domain::Op"`` (they would need a TensorRT plugin).
    ``allow_recent`` accepts the opset-23/24 operators of the newest TensorRT 10 releases.
    """
    supported = TRT_ONNX_OPS | (TRT_ONNX_RECENT_OPS if allow_recent else frozenset())
    bad = {op if not domain else f"{domain}::{op}" for domain, op in onnx_op_types(model)
           if domain or op not in supported}
    return sorted(bad)


def has_qdq(model) -> bool:
    """Whether ``model`` is explicitly quantized (QuantizeLinear/DequantizeLinear nodes)."""
    return any(op in QDQ_OPS for _, op in onnx_op_types(model))
