"""Loading and saving ONNX models safely.

Invariants kept here:
- external-data locations are resolved against the model's own folder and must stay inside it
  (checked before any byte of external data is read);
- the input file is never written; outputs are written to a temporary file in the target folder and
  renamed over the destination, so a failure never leaves a half-written model behind;
- models above the protobuf limit are written with their tensors as external data next to the output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import OnnxPruneError

MIN_OPSET = 7
MIN_IR = 3
# protobuf refuses messages above 2 GiB; stay clearly below it.
PROTOBUF_LIMIT = 2_000_000_000
QUANTIZED_OPS = {
    "QLinearConv", "ConvInteger", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
    "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
}


def _external_locations(model: onnx.ModelProto) -> list[str]:
    return [
        entry.value
        for tensor in external_data_helper._get_all_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    ]


def check_external_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that are absolute or leave the model's folder.

    Raises:
        OnnxPruneError: naming the offending location; nothing has been read at that point.
    """
    base = base_dir.resolve()
    for location in _external_locations(model):
        if os.path.isabs(location) or Path(location).is_absolute():
            raise OnnxPruneError(f"external data location '{location}' is an absolute path; refusing to read it")
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise OnnxPruneError(f"external data location '{location}' points outside the model's folder; refusing to read it")
        if not target.is_file():
            raise OnnxPruneError(f"external data file '{location}' not found next to the model")


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data, after checking the file is safe and usable.

    Args:
        path: path of an .onnx file.
    Returns:
        The model, with external tensors loaded into memory.
    Raises:
        OnnxPruneError: missing/unreadable/empty/non-ONNX/truncated file, unsafe external data,
            unsupported IR or opset, quantized model, or a graph without nodes.
    """
    p = Path(path)
    if not p.exists():
        raise OnnxPruneError(f"{p}: file not found")
    if p.is_dir():
        raise OnnxPruneError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise OnnxPruneError(f"{p}: file is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except PermissionError:
        raise OnnxPruneError(f"{p}: permission denied") from None
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-like or ValueError
        raise OnnxPruneError(f"{p}: not a valid ONNX model (cannot parse protobuf: {type(exc).__name__})") from None
    if not model.HasField("graph") or (model.ir_version == 0 and not model.opset_import):
        raise OnnxPruneError(f"{p}: not a valid ONNX model (no graph)")
    check_external_paths(model, p.parent)
    try:
        external_data_helper.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise OnnxPruneError(f"{p}: cannot read external data ({exc})") from None
    check_supported(model, str(p))
    return model


def check_supported(model: onnx.ModelProto, label: str = "model") -> None:
    """Refuse models onnxprune cannot handle: empty graphs, old IR/opset, quantized graphs."""
    if len(model.graph.node) == 0:
        raise OnnxPruneError(f"{label}: the graph has no nodes")
    if model.ir_version < MIN_IR:
        raise OnnxPruneError(f"{label}: IR version {model.ir_version} is below the supported minimum {MIN_IR}")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise OnnxPruneError(f"{label}: opset {opset} is below the supported minimum {MIN_OPSET}")
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if quantized:
        raise OnnxPruneError(
            f"{label}: quantized model ({', '.join(quantized)}) is not supported; prune the float model, then quantize"
        )


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ('' or 'ai.onnx') domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike]) -> Path:
    """Validate an output path before any work is done.

    Raises:
        OnnxPruneError: the output equals an input, or its folder is missing or not writable.
    """
    out = Path(output)
    for inp in inputs:
        if Path(inp).exists() and out.exists() and out.resolve() == Path(inp).resolve():
            raise OnnxPruneError(f"output path {out} is the input file; refusing to overwrite the input")
        if out.resolve() == Path(inp).resolve():
            raise OnnxPruneError(f"output path {out} is the input file; refusing to overwrite the input")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise OnnxPruneError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"output folder {folder} is not writable")
    if out.is_dir():
        raise OnnxPruneError(f"output path {out} is a directory")
    return out


def save(model: onnx.ModelProto, output: str | os.PathLike, size_limit: int = PROTOBUF_LIMIT) -> list[Path]:
    """Write a model atomically; above `size_limit` bytes its tensors go to `<output>.data`.

    Returns:
        The files written (the model, and the external-data file when one was needed).
    """
    out = Path(output)
    folder = out.resolve().parent
    written = []
    fd, tmp_model = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        if not _fits_bytesize(model) or model.ByteSize() > size_limit:
            data_name = out.name + ".data"
            tmp_data = folder / f".{data_name}.tmp"
            if tmp_data.exists():  # onnx appends to an existing data file
                tmp_data.unlink()
            to_save = onnx.ModelProto()
            to_save.CopyFrom(model)
            external_data_helper.convert_model_to_external_data(
                to_save, all_tensors_to_one_file=True, location=tmp_data.name, size_threshold=1024
            )
            onnx.save_model(to_save, tmp_model)
            # rewrite the location to the final name now that the data file exists under its temp name
            for tensor in external_data_helper._get_all_tensors(to_save):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            with open(tmp_model, "wb") as f:
                f.write(to_save.SerializeToString())
            os.replace(tmp_data, folder / data_name)
            written.append(folder / data_name)
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
        os.replace(tmp_model, out)
        written.insert(0, out)
    except BaseException:
        if os.path.exists(tmp_model):
            os.unlink(tmp_model)
        raise
    return written


def _fits_bytesize(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:
        return False
