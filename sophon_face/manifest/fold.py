"""Fold block-quantised ONNX weights into fp32 so ONNX Runtime can load the model.

The CPU-profile weights ship as int8 block-quantised ONNX (opset 21 DequantizeLinear with
a ``block_size`` attribute on constant weights). ONNX Runtime refuses them as shipped.
Every such DequantizeLinear has only initializers as inputs, so its output is a constant:
we compute it once with numpy, store it as an fp32 initializer under the node's output
name, and drop the node. Graph inputs that no node reads any more (leftovers of the
quantiser, which listed the original weights as inputs) are dropped too, so the session
sees only the real image input.
"""

from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np

log = logging.getLogger(__name__)


def dequantize_blocked(quantized: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                       axis: int, block_size: int) -> np.ndarray:
    """DequantizeLinear (opset 21 semantics) for per-tensor, per-axis and blocked scales."""
    x = quantized.astype(np.float32)
    if scales.ndim == 0 or scales.size == 1:
        zp = 0.0 if zero_points is None else float(np.asarray(zero_points).reshape(-1)[0])
        return ((x - zp) * float(scales.reshape(-1)[0])).astype(np.float32)
    axis = axis % x.ndim
    if block_size <= 0:  # per-axis: scales is 1-D along ``axis``
        shape = [1] * x.ndim
        shape[axis] = -1
        s = scales.reshape(shape).astype(np.float32)
        zp = 0.0 if zero_points is None else zero_points.reshape(shape).astype(np.float32)
        return ((x - zp) * s).astype(np.float32)
    length = x.shape[axis]
    s = np.repeat(scales.astype(np.float32), block_size, axis=axis)
    s = np.take(s, np.arange(length), axis=axis)
    if zero_points is None:
        zp = 0.0
    else:
        zp = np.repeat(zero_points.astype(np.float32), block_size, axis=axis)
        zp = np.take(zp, np.arange(length), axis=axis)
    return ((x - zp) * s).astype(np.float32)


def fold_dequantize(model_bytes: bytes) -> bytes:
    """Return the serialized model with every constant DequantizeLinear folded to fp32."""
    import onnx  # only needed when preparing CPU-profile models
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    inits: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    kept_nodes: List[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
            kept_nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        arrays = [numpy_helper.to_array(inits[i]) if i else None for i in node.input]
        quantized, scales = arrays[0], arrays[1]
        zero_points = arrays[2] if len(arrays) > 2 else None
        value = dequantize_blocked(quantized, scales, zero_points,
                                   int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
        inits[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        folded += 1

    consumed = {i for n in kept_nodes for i in n.input}
    graph_outputs = {o.name for o in graph.output}
    live_inits = [t for name, t in inits.items() if name in consumed or name in graph_outputs]
    live_inputs = [i for i in graph.input if i.name in consumed and i.name not in inits]
    dropped_inputs = len(graph.input) - len(live_inputs)

    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(live_inits)
    del graph.input[:]
    graph.input.extend(live_inputs)
    onnx.checker.check_model(model)
    log.info("folded %d DequantizeLinear nodes, dropped %d unused graph inputs",
             folded, dropped_inputs)
    return model.SerializeToString()
