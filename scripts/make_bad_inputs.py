#!/usr/bin/env python3
"""Generate the bad-input corpus under tests/bad_inputs/ (issue #6, item 1).

    python scripts/make_bad_inputs.py                 # rewrites tests/bad_inputs/
    python scripts/make_bad_inputs.py --out DIR       # somewhere else (the reproducibility test does this)

Deterministic: the same onnx/numpy versions give byte-identical files (fixed seeds, explicit IR
version/opset/producer, .npz archives written with a fixed timestamp). Every case is listed in
`manifest.json` with its files, the CLI arguments, the expected exit code and a substring the
one-line `error:` message must contain. `tests/test_bad_inputs.py` runs every case through
`python -m onnxprune` in a subprocess.

Argument placeholders in the manifest (filled in by the test at run time):
    {out}   the output file, in an empty output folder of its own
    {outdir} that output folder
Inputs are copied into a work folder that is the subprocess's current directory, so the CLI
arguments name them by their plain file names. `setup` asks the test to prepare state that cannot
be a committed file: "mkdir:NAME" (a directory), "readonly_outdir" (the output folder made
read-only; as root, who ignores permission bits, also immutable with `chattr +i`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "tests", "bad_inputs")
OPSET = 13
IR = 8
SHAPE = [1, 3, 8, 8]   # NCHW, batch fixed: no --input-shape needed


def _model(nodes, inputs, outputs, inits=None, opset=OPSET, ir=IR, extra_opsets=()) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "bad_input_case", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    m = helper.make_model(g, opset_imports=opsets, ir_version=ir, producer_name="make_bad_inputs")
    return m


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(rng, *shape):
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def tiny_cnn(opset=OPSET, batch=1) -> onnx.ModelProto:
    """input[1,3,8,8] -> Conv(8) -> Relu -> Conv(8) -> Relu -> GAP -> Flatten -> Gemm(4) -> output[1,4].

    The batch dim is fixed (`batch`), as in many exported models.
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1),
    ]
    inits = {"c1_w": _w(rng, 8, 3, 3, 3), "c1_b": _w(rng, 8), "c2_w": _w(rng, 8, 8, 3, 3), "c2_b": _w(rng, 8),
             "fc_w": _w(rng, 4, 8), "fc_b": _w(rng, 4)}
    return _model(nodes, [_vi("input", [batch, *SHAPE[1:]])], [_vi("output", [batch, 4])], inits, opset=opset)


def with_weight(value) -> onnx.ModelProto:
    """tiny_cnn with one element of conv2's weight replaced by `value` (NaN, Inf)."""
    m = tiny_cnn()
    init = next(i for i in m.graph.initializer if i.name == "c2_w")
    arr = numpy_helper.to_array(init).copy()
    arr.flat[5] = value
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return m


def no_nodes() -> onnx.ModelProto:
    """A valid model whose graph has no nodes (the input is the output)."""
    return _model([], [_vi("input", SHAPE)], [_vi("input", SHAPE)])


def no_conv() -> onnx.ModelProto:
    """A valid classifier head without any Conv: GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1)]
    return _model(nodes, [_vi("input", SHAPE)], [_vi("output", [1, 4])], {"fc_w": _w(rng, 4, 3), "fc_b": _w(rng, 4)})


def qlinearconv() -> onnx.ModelProto:
    """Fully quantized: QuantizeLinear -> QLinearConv -> DequantizeLinear."""
    rng = np.random.default_rng(2)
    inits = {"xs": np.float32(0.05), "xz": np.uint8(128), "ws": np.float32(0.01), "wz": np.uint8(128),
             "w": rng.integers(100, 156, (8, 3, 3, 3)).astype(np.uint8), "ys": np.float32(0.1), "yz": np.uint8(128)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"], name="quant"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qconv",
                              pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["output"], name="dequant")]
    return _model(nodes, [_vi("input", SHAPE)], [_vi("output", [1, 8, 8, 8])], inits)


def convinteger() -> onnx.ModelProto:
    """Integer conv on a uint8 input: ConvInteger -> Cast."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.integers(100, 156, (8, 3, 3, 3)).astype(np.uint8), "xz": np.uint8(128), "wz": np.uint8(128)}
    nodes = [helper.make_node("ConvInteger", ["input", "w", "xz", "wz"], ["acc"], name="convint", pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["acc"], ["output"], name="cast", to=TensorProto.FLOAT)]
    return _model(nodes, [_vi("input", SHAPE, TensorProto.UINT8)], [_vi("output", [1, 8, 8, 8])], inits)


def qdq_conv() -> onnx.ModelProto:
    """QDQ format: QuantizeLinear/DequantizeLinear around a float Conv (activations and weights)."""
    rng = np.random.default_rng(4)
    inits = {"s": np.float32(0.05), "z": np.uint8(128), "ws": np.float32(0.01), "wz": np.uint8(128),
             "wq": rng.integers(100, 156, (8, 3, 3, 3)).astype(np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w"),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["output"], name="dq_out")]
    return _model(nodes, [_vi("input", SHAPE)], [_vi("output", [1, 8, 8, 8])], inits)


def custom_op_branch() -> onnx.ModelProto:
    """Two branches after a shared stem; one ends in an op of an unknown custom domain.

    stem conv (prunable: read by two convs) -> branch a: conv_a -> com.example.Mystery -> out_a (blocked);
    branch b: conv_b -> Relu -> conv_b2 -> out_b (conv_b prunable). onnxruntime cannot run the original
    (unknown op), so verification records a note instead of comparing outputs.
    """
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["input", "stem_w"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
        helper.make_node("Conv", ["sr", "a_w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Mystery", ["a"], ["out_a"], name="mystery", domain="com.example"),
        helper.make_node("Conv", ["sr", "b_w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"], name="b_relu"),
        helper.make_node("Conv", ["br", "b2_w"], ["out_b"], name="conv_b2", pads=[1, 1, 1, 1]),
    ]
    inits = {"stem_w": _w(rng, 8, 3, 3, 3), "a_w": _w(rng, 8, 8, 3, 3), "b_w": _w(rng, 8, 8, 3, 3),
             "b2_w": _w(rng, 4, 8, 3, 3)}
    return _model(nodes, [_vi("input", SHAPE)], [_vi("out_a", [1, 8, 8, 8]), _vi("out_b", [1, 4, 8, 8])], inits,
                  extra_opsets=[("com.example", 1)])


def external(location: str) -> onnx.ModelProto:
    """tiny_cnn with every weight as external data at `location` (the data file itself is not written)."""
    m = tiny_cnn()
    external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True, location="weights.bin",
                                                        size_threshold=0)
    # the model's tensors now carry raw_data plus an external location; drop the data, point elsewhere
    for tensor in external_data_helper._get_all_tensors(m):
        if tensor.data_location == TensorProto.EXTERNAL:
            tensor.ClearField("raw_data")
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    return m


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz as numpy writes it, but with a fixed timestamp so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy_bytes(arrays[key]))
    return buf.getvalue()


def calib(n, shape=(3, 8, 8), dtype=np.float32, seed=7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def build() -> tuple[dict[str, bytes], list[dict]]:
    """All corpus files (name -> bytes) and the manifest cases."""
    files: dict[str, bytes] = {}
    valid = tiny_cnn().SerializeToString()
    files["valid_tiny_cnn.onnx"] = valid
    files["not_protobuf.onnx"] = b"this is a text file with an .onnx suffix, not a protobuf\n" * 4
    files["truncated.onnx"] = valid[: len(valid) // 2]
    files["empty.onnx"] = b""
    files["no_nodes.onnx"] = no_nodes().SerializeToString()
    files["no_conv.onnx"] = no_conv().SerializeToString()
    files["quantized_qlinearconv.onnx"] = qlinearconv().SerializeToString()
    files["quantized_convinteger.onnx"] = convinteger().SerializeToString()
    files["quantized_qdq.onnx"] = qdq_conv().SerializeToString()
    files["nan_weights.onnx"] = with_weight(np.nan).SerializeToString()
    files["inf_weights.onnx"] = with_weight(np.inf).SerializeToString()
    files["opset6.onnx"] = tiny_cnn(opset=6).SerializeToString()
    files["custom_op_branch.onnx"] = custom_op_branch().SerializeToString()
    files["external_parent_escape.onnx"] = external("../../etc/passwd").SerializeToString()
    files["external_absolute.onnx"] = external("/etc/passwd").SerializeToString()
    files["external_missing.onnx"] = external("weights.bin").SerializeToString()
    files["calib_wrong_shape.npy"] = npy_bytes(calib(16, shape=(3, 9, 9)))
    files["calib_wrong_dtype.npy"] = npy_bytes((calib(16) * 50).astype(np.int32))
    files["calib_zero_samples.npz"] = npz_bytes({"input": calib(0)})
    files["calib_one_sample.npy"] = npy_bytes(calib(1))
    files["calib_six_samples.npy"] = npy_bytes(calib(6))
    files["fixed_batch4.onnx"] = tiny_cnn(batch=4).SerializeToString()
    files["calib_two_samples.npy"] = npy_bytes(calib(2))
    files["calib_wrong_name.npz"] = npz_bytes({"image": calib(8), "mask": calib(8, seed=8)})

    V = "valid_tiny_cnn.onnx"
    ok_flags = ["--criterion", "l1"]

    def case(name, inputs, args, exit_code, stderr, setup=None, note="", stdout=None):
        c = {"name": name, "files": inputs, "args": args, "exit": exit_code, "stderr": stderr}
        if stdout:
            c["stdout"] = stdout
        if setup:
            c["setup"] = setup
        if note:
            c["note"] = note
        return c

    cases = [
        case("not_protobuf", ["not_protobuf.onnx"], ["not_protobuf.onnx", "-o", "{out}"], 1, "not a valid ONNX model"),
        case("truncated", ["truncated.onnx"], ["truncated.onnx", "-o", "{out}"], 1, "not a valid ONNX model"),
        case("empty_file", ["empty.onnx"], ["empty.onnx", "-o", "{out}"], 1, "file is empty"),
        case("missing_file", [], ["nope.onnx", "-o", "{out}"], 1, "file not found"),
        case("directory", [], ["a_directory.onnx", "-o", "{out}"], 1, "is a directory", setup=["mkdir:a_directory.onnx"]),
        case("no_nodes", ["no_nodes.onnx"], ["no_nodes.onnx", "-o", "{out}"], 1, "the graph has no nodes"),
        case("no_conv", ["no_conv.onnx"], ["no_conv.onnx", "-o", "{out}"], 1, "no Conv or ConvTranspose",
             note="a model without Conv is refused (exit 1), not copied through"),
        case("quantized_qlinearconv", ["quantized_qlinearconv.onnx"], ["quantized_qlinearconv.onnx", "-o", "{out}"],
             1, "quantized model (DequantizeLinear, QLinearConv, QuantizeLinear)"),
        case("quantized_convinteger", ["quantized_convinteger.onnx"], ["quantized_convinteger.onnx", "-o", "{out}"],
             1, "quantized model (ConvInteger)"),
        case("quantized_qdq", ["quantized_qdq.onnx"], ["quantized_qdq.onnx", "-o", "{out}"],
             1, "quantized model (DequantizeLinear, QuantizeLinear)"),
        case("nan_weights", ["nan_weights.onnx"], ["nan_weights.onnx", "-o", "{out}"], 1, "'c2_w' contains NaN or Inf"),
        case("inf_weights", ["inf_weights.onnx"], ["inf_weights.onnx", "-o", "{out}"], 1, "'c2_w' contains NaN or Inf"),
        case("opset_too_old", ["opset6.onnx"], ["opset6.onnx", "-o", "{out}"], 1, "opset 6 is below the supported minimum 7"),
        case("custom_op_branch", ["custom_op_branch.onnx"], ["custom_op_branch.onnx", "-o", "{out}", *ok_flags], 0, "wrote",
             note="the branch read by com.example.Mystery is blocked, the rest is pruned"),
        case("external_parent_escape", ["external_parent_escape.onnx"], ["external_parent_escape.onnx", "-o", "{out}"],
             1, "'../../etc/passwd' points outside the model's folder; refusing to read it"),
        case("external_absolute", ["external_absolute.onnx"], ["external_absolute.onnx", "-o", "{out}"],
             1, "'/etc/passwd' is an absolute path; refusing to read it"),
        case("external_missing", ["external_missing.onnx"], ["external_missing.onnx", "-o", "{out}"],
             1, "external data file 'weights.bin' not found"),
        case("calib_wrong_shape", [V, "calib_wrong_shape.npy"], [V, "-o", "{out}", "--calib", "calib_wrong_shape.npy"],
             1, "has samples of shape (3, 9, 9), the model expects (3, 8, 8)"),
        case("calib_wrong_dtype", [V, "calib_wrong_dtype.npy"], [V, "-o", "{out}", "--calib", "calib_wrong_dtype.npy"],
             1, "is int32, the model expects float32"),
        case("calib_zero_samples", [V, "calib_zero_samples.npz"], [V, "-o", "{out}", "--calib", "calib_zero_samples.npz"],
             1, "no samples"),
        case("calib_one_sample", [V, "calib_one_sample.npy"], [V, "-o", "{out}", "--calib", "calib_one_sample.npy"],
             0, "wrote", stdout="held-out split is empty",
             note="one sample: scored on it, recovery skipped with a note (no held-out split)"),
        case("calib_fixed_batch", [V, "calib_six_samples.npy"], [V, "-o", "{out}", "--calib", "calib_six_samples.npy",
                                                              *ok_flags],
             0, "wrote", note="batch fixed to 1: calibration and recovery stream one sample per run"),
        case("calib_fewer_than_fixed_batch", ["fixed_batch4.onnx", "calib_two_samples.npy"],
             ["fixed_batch4.onnx", "-o", "{out}", "--calib", "calib_two_samples.npy"],
             1, "too few samples (2): the model's batch is fixed to 4"),
        case("calib_wrong_name", [V, "calib_wrong_name.npz"], [V, "-o", "{out}", "--calib", "calib_wrong_name.npz"],
             1, "no array for model input(s) input"),
        case("calib_missing", [V], [V, "-o", "{out}", "--calib", "nope.npz"], 1, "calibration data nope.npz: not found"),
        case("output_is_input", [V], [V, "-o", V], 1, "is the input file; refusing to overwrite the input"),
        case("output_dir_missing", [V], [V, "-o", "{outdir}/missing/pruned.onnx"], 1, "does not exist"),
        case("output_dir_readonly", [V], [V, "-o", "{out}"], 1, "is not writable", setup=["readonly_outdir"]),
        case("output_is_directory", [V], [V, "-o", "{outdir}"], 1, "is a directory"),
        case("ratio_zero", [V], [V, "-o", "{out}", "--ratio", "0", *ok_flags], 0, "wrote",
             note="ratio 0: the output computes exactly what the input computes"),
        case("ratio_0.99", [V], [V, "-o", "{out}", "--ratio", "0.99", *ok_flags], 0, "wrote"),
        case("ratio_one", [V], [V, "-o", "{out}", "--ratio", "1"], 2, "ratio must be in [0, 1), got 1.0"),
        case("ratio_negative", [V], [V, "-o", "{out}", "--ratio", "-0.1"], 2, "ratio must be in [0, 1), got -0.1"),
        case("ratio_nan", [V], [V, "-o", "{out}", "--ratio", "nan"], 2, "ratio must be in [0, 1), got nan"),
        # an unknown --criterion is a usage error (exit 2, several lines): tests/test_cli_usability.py
        case("analyse_not_protobuf", ["not_protobuf.onnx"], ["analyse", "not_protobuf.onnx"], 1, "not a valid ONNX model"),
        case("analyse_no_conv", ["no_conv.onnx"], ["analyse", "no_conv.onnx"], 1, "no Conv or ConvTranspose"),
    ]
    for c in cases:
        for f in c["files"]:
            assert f in files, f
    return files, cases


def self_check(files: dict[str, bytes]) -> None:
    """The valid models are valid and the broken ones are broken the way their names say."""
    for name in ("valid_tiny_cnn.onnx", "no_nodes.onnx", "no_conv.onnx", "quantized_qlinearconv.onnx",
                 "quantized_convinteger.onnx", "quantized_qdq.onnx", "nan_weights.onnx", "inf_weights.onnx",
                 "opset6.onnx", "fixed_batch4.onnx", "custom_op_branch.onnx"):
        onnx.checker.check_model(onnx.load_from_string(files[name]))
    for name in ("not_protobuf.onnx", "truncated.onnx"):
        try:
            onnx.load_from_string(files[name])
        except Exception:
            continue
        raise AssertionError(f"{name} parses as a protobuf; make it more broken")


def write(out_dir: str) -> list[str]:
    """Write the corpus into `out_dir` (its previous contents are removed). Returns the file names."""
    files, cases = build()
    self_check(files)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    manifest = {"schema_version": 1, "generator": "scripts/make_bad_inputs.py",
                "placeholders": {"{out}": "output file in an empty folder", "{outdir}": "that folder"},
                "cases": cases}
    with open(os.path.join(out_dir, "manifest.json"), "w", newline="\n") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return sorted([*files, "manifest.json"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="target folder [default: tests/bad_inputs]")
    args = parser.parse_args()
    names = write(args.out)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in names)
    print(f"wrote {len(names)} files ({total} bytes) to {args.out}")


if __name__ == "__main__":
    main()
