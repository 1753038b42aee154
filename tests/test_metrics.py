"""MAC and parameter counts against hand-computed numbers."""

import numpy as np
from onnx import TensorProto, helper

from helpers import make_model, tensor
from onnxprune.analysis import fold, graph, metrics


def _stats(model):
    shapes = graph.infer_shapes(fold.normalise(model), graph.fixed_input_shapes(model))
    return metrics.node_macs(model, shapes), metrics.count_params(model)


def test_conv_depthwise_convtranspose_gemm_macs():
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "b1": np.zeros(8, np.float32),
        "w2": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),            # depthwise
        "w3": rng.standard_normal((8, 4, 2, 2)).astype(np.float32),            # ConvTranspose 8 -> 4, stride 2
        "wg": rng.standard_normal((10, 4 * 32 * 32)).astype(np.float32), "bg": np.zeros(10, np.float32),
        "shape": np.array([1, -1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="c2", pads=[1, 1, 1, 1], group=8),
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], name="c3", strides=[2, 2]),
        helper.make_node("Reshape", ["c3", "shape"], ["f"], name="r"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 10])], inits)
    macs, params = _stats(model)
    assert macs["c1"] == 8 * 16 * 16 * 3 * 3 * 3          # C_out*H*W * C_in*k*k = 55296
    assert macs["c2"] == 8 * 16 * 16 * 1 * 3 * 3          # depthwise: 18432
    assert macs["c3"] == 8 * 16 * 16 * 4 * 2 * 2          # C_in*H_in*W_in * C_out*k*k = 32768
    assert macs["fc"] == 10 * 4 * 32 * 32                 # 40960
    assert params == 8 * 27 + 8 + 8 * 9 + 8 * 16 + 10 * 4096 + 10


def test_matmul_macs():
    w = np.ones((6, 5), np.float32)
    shape = np.array([1, 7, 5], np.int64)                   # an int64 constant: not a parameter
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                        helper.make_node("Reshape", ["m", "shape"], ["y"], name="rs")],
                       [tensor("x", [1, 7, 6])], [tensor("y", [1, 7, 5])], {"w": w, "shape": shape})
    macs, params = _stats(model)
    assert macs["mm"] == 7 * 5 * 6
    assert params == 6 * 5
    assert {i.name: i.data_type for i in model.graph.initializer} == {"w": TensorProto.FLOAT, "shape": TensorProto.INT64}
