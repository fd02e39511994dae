"""Model cost: parameter counts and multiply-accumulates (MACs)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import onnx
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs_torch(model: nn.Module, size: tuple[int, int] = (224, 224)) -> int:
    """MACs of one forward pass at batch 1, from torch's FlopCounterMode (FLOPs = 2 * MACs;
    it counts convolutions, transposed convolutions and matrix products)."""
    x = torch.zeros(1, model.in_channels, *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


# Ops whose multiply-accumulates are counted exactly; every other op is reported by the number
# of output elements it writes (elementwise work: Add, Relu, Resize, Sigmoid, casts, Q/DQ, ...).
MAC_OPS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger")


@dataclasses.dataclass
class OnnxCost:
    """MACs of one ONNX graph at one input shape, by op type, and output elements of the rest."""

    input_shape: tuple[int, ...]
    macs_by_op: dict[str, int]
    other_elements: dict[str, int]
    params: int

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op.values())


def _shape_table(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _node_macs(op: str, node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    ins = [shapes.get(name) for name in node.input]
    out = shapes.get(node.output[0])
    # QLinearConv / QLinearMatMul carry (x, x_scale, x_zp, w, ...): the weight is input 3.
    x, w = (ins[0], ins[3]) if op.startswith("QLinear") else (ins[0], ins[1])
    if x is None or w is None or out is None:
        raise ValueError(f"{node.name or op}: shape inference left a shape unknown")
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        # W is (M, C/group, k...): each output element takes C/group * prod(k) MACs.
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        # W is (C, M/group, k...): each input element scatters into M/group * prod(k) outputs.
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        k = x[0] if trans_a else x[1]
        return math.prod(out) * k
    # MatMul family, numpy semantics: output (..., M, N), contracted dimension K = x[-1].
    return math.prod(out) * (x[-1] if len(x) > 1 else 1)


def count_macs_onnx(model: str | os.PathLike | onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> OnnxCost:
    """Count MACs exactly from an ONNX graph's shapes (bias additions are not MACs; Q/DQ graphs
    count their float Conv after DequantizeLinear). `input_shape` fixes dynamic axes; the
    default is batch 1 at the graph's static sizes, 224x224 where those are dynamic too."""
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    proto = copy.deepcopy(proto)
    init_names = {t.name for t in proto.graph.initializer}
    graph_input = next(i for i in proto.graph.input if i.name not in init_names)
    dims = graph_input.type.tensor_type.shape.dim
    if input_shape is None:
        defaults = [1, 0, 224, 224]
        input_shape = tuple(d.dim_value if d.HasField("dim_value") else defaults[i] for i, d in enumerate(dims))
    for d, size in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = size
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    shapes = _shape_table(proto)
    macs: dict[str, int] = {}
    other: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in MAC_OPS:
            macs[node.op_type] = macs.get(node.op_type, 0) + _node_macs(node.op_type, node, shapes)
        elif node.output and (out := shapes.get(node.output[0])) is not None:
            other[node.op_type] = other.get(node.op_type, 0) + math.prod(out)
    params = sum(math.prod(t.dims) for t in proto.graph.initializer)
    return OnnxCost(tuple(input_shape), macs, other, params)
