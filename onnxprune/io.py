"""Loading and saving ONNX models safely.

Invariants kept here:
- external-data locations are resolved against the model's own folder and must stay inside it
  (checked before any byte of external data is read);
- the input file is never written; outputs are written to a temporary file in the target folder and
  renamed over the destination, so a failure never leaves a half-written model behind;
- models above the protobuf limit (`PROTOBUF_LIMIT`, read at call time) are written with their
  tensors as external data next to the output (`<out>.data`, relative location), one tensor at a
  time; they are loaded without one parse of the whole model (the graph file, then each tensor).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
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
        The model, with external tensors loaded into memory. Only the graph file is parsed as one
        protobuf message; external tensors are then read one by one into it, so a model above
        2 GiB loads holding its weights once (plus one tensor in flight).
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


def new_file_mode() -> int:
    """The permission bits a newly created file gets under the current umask (0o666 & ~umask).

    Atomic writes go through `tempfile.mkstemp`, whose file is 0o600 whatever the umask; the
    final file gets this mode instead, so a model written for another user to serve stays readable.
    """
    mask = os.umask(0o022)   # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write `text` (UTF-8) to `path` atomically (temp file in the same folder + rename), with the
    mode the umask gives: a failed write leaves no partial file and an existing one untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model: onnx.ModelProto, output: str | os.PathLike, size_limit: int | None = None) -> list[Path]:
    """Write a model atomically; above `size_limit` bytes (default `PROTOBUF_LIMIT`) its tensors go
    to `<output>.data`, named by a relative location, written tensor by tensor (no copy of the model).

    Returns:
        The files written (the model, and the external-data file when one was needed).
    """
    out = Path(output)
    folder = out.resolve().parent
    written = []
    fd, tmp_model = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_data = None
    try:
        if too_big(model, size_limit):
            data_name = out.name + ".data"
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            write_external(model, tmp_model, tmp_data, location=data_name)
            os.chmod(tmp_data, new_file_mode())
            os.replace(tmp_data, folder / data_name)
            written.append(folder / data_name)
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
        os.chmod(tmp_model, new_file_mode())
        os.replace(tmp_model, out)
        written.insert(0, out)
    except BaseException:
        for tmp in (tmp_model, tmp_data):
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return written


# --- models above the protobuf limit -----------------------------------------------------------
# A ModelProto above 2 GiB cannot be serialized (upb raises EncodeError, even from ByteSize), so
# neither `SerializeToString`, nor `onnx.checker.check_model(proto)`, nor
# `onnx.shape_inference.infer_shapes(proto)`, nor onnxruntime from bytes work on it. Such models
# travel as files: the graph in a small .onnx, the tensors in one external-data file next to it.
# Every check reads `PROTOBUF_LIMIT` at call time, so tests lower it to exercise the file route
# on tiny models.

EXTERNAL_THRESHOLD = 1024   # bytes: smaller tensors stay inside the .onnx (shape constants...)
_ALIGN_LARGE = 65536        # offsets of tensors >= 1 MiB: a multiple of any mmap granularity
_ALIGN_SMALL = 64
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                "uint64_data", "external_data", "data_location")


def too_big(model: onnx.ModelProto, limit: int | None = None) -> bool:
    """True when `model` should not travel as one serialized protobuf: above `limit` bytes
    (default: `PROTOBUF_LIMIT`, read now) or beyond what protobuf can serialize at all."""
    limit = PROTOBUF_LIMIT if limit is None else limit
    try:
        return model.ByteSize() > limit
    except Exception:  # EncodeError: above 2 GiB upb cannot even size the message
        return True


def serialized_size(model: onnx.ModelProto) -> int:
    """Bytes of the serialized model; above 2 GiB (not serializable) an estimate from tensor sizes."""
    try:
        return model.ByteSize()
    except Exception:
        light, pairs = _without_large_tensors(model, EXTERNAL_THRESHOLD)
        return _light_size(light) + sum(tensor_nbytes(t) for _, t in pairs)


def _light_size(light: onnx.ModelProto) -> int:
    try:
        return light.ByteSize()
    except Exception:
        return 2 ** 31


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from dims and dtype (without touching the data)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        itemsize = 4
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n * itemsize


def copy_fields(dst, src, skip: tuple[str, ...] = ()) -> None:
    """Copy the set fields of message `src` into `dst`, except those named in `skip`."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _externalisable(tensor: onnx.TensorProto, threshold: int) -> bool:
    return (tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)
            and tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.HasField("segment")
            and tensor_nbytes(tensor) >= threshold)


def _without_large_tensors(model: onnx.ModelProto, threshold: int):
    """A copy of `model` without the data of its large top-level initializers.

    Returns `(light, pairs)`: nothing large is copied into `light` (nodes and small tensors are);
    each large initializer gets a data-less stand-in (name, dims, dtype) at its position in
    `light.graph.initializer`, and `pairs` lists `(stand-in, original initializer)`.
    """
    light = onnx.ModelProto()
    copy_fields(light, model, skip=("graph",))
    copy_fields(light.graph, model.graph, skip=("initializer",))
    pairs = []
    for init in model.graph.initializer:
        if _externalisable(init, threshold):
            stub = light.graph.initializer.add()
            copy_fields(stub, init, skip=_DATA_FIELDS)
            pairs.append((stub, init))
        else:
            light.graph.initializer.append(init)
    return light, pairs


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    value = numpy_helper.to_array(tensor)
    return value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()   # raw_data is little-endian


def write_external(model: onnx.ModelProto, model_path: str | os.PathLike, data_path: str | os.PathLike,
                   location: str | None = None, threshold: int = EXTERNAL_THRESHOLD) -> None:
    """Write `model` as `model_path` plus one external-data file `data_path`, without changing `model`.

    Tensors of `threshold` bytes or more go to `data_path` (offsets aligned for memory mapping);
    the .onnx names the data file by `location` (default: the name of `data_path`), relative to
    the .onnx's folder. The model is never serialized whole nor copied whole: the weights are
    written one tensor at a time. `data_path` is truncated first.
    """
    location = location or Path(data_path).name
    light, pairs = _without_large_tensors(model, threshold)
    with open(data_path, "wb") as f:
        offset = 0
        for stub, tensor in pairs:
            data = _tensor_bytes(tensor)
            pad = -offset % (_ALIGN_LARGE if len(data) >= 1 << 20 else _ALIGN_SMALL)
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            f.write(data)
            for key, value in (("location", location), ("offset", offset), ("length", len(data))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, str(value)
            stub.data_location = onnx.TensorProto.EXTERNAL
            offset += len(data)
            del data
    try:
        blob = light.SerializeToString()
    except Exception:   # huge tensors elsewhere (Constant attributes, subgraphs): onnx's own converter
        _write_external_generic(model, model_path, data_path, location, threshold)
        return
    with open(model_path, "wb") as f:
        f.write(blob)


def _write_external_generic(model: onnx.ModelProto, model_path, data_path, location: str, threshold: int) -> None:
    """Fallback of `write_external` for models whose large tensors are not all top-level initializers
    (needs a full copy of the model)."""
    folder = Path(model_path).resolve().parent
    scratch = tempfile.mkdtemp(prefix=".onnxprune-ext-", dir=folder)
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        external_data_helper.convert_model_to_external_data(
            copy, all_tensors_to_one_file=True, location="data.bin", size_threshold=threshold, convert_attribute=True)
        onnx.save_model(copy, os.path.join(scratch, "model.onnx"))
        for tensor in external_data_helper._get_all_tensors(copy):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        with open(model_path, "wb") as f:
            f.write(copy.SerializeToString())
        os.replace(os.path.join(scratch, "data.bin"), data_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class TemporaryModelFile:
    """`model` written once into a private temporary folder: `path` (the graph) and `path + ".data"`
    (tensors of `EXTERNAL_THRESHOLD` bytes or more, relative location).

    The folder is removed by `close()`, at the end of a `with` block, or when this object is
    garbage-collected, whichever comes first. It lives in the system temp folder ($TMPDIR).
    """

    def __init__(self, model: onnx.ModelProto):
        self.folder = tempfile.mkdtemp(prefix="onnxprune-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self.path = os.path.join(self.folder, "model.onnx")
        try:
            write_external(model, self.path, self.path + ".data")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the folder (idempotent)."""
        self._cleanup()

    def __enter__(self) -> "TemporaryModelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
