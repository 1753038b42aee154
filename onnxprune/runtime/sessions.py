"""onnxruntime sessions and seeded inputs: how any model of the program reaches onnxruntime.

`OrtModel` is what onnxruntime is given for a model: the program's sessions are built by
`session` (bench keeps an `OrtModel` per model), so models above the protobuf limit (2 GiB), which
cannot be serialized, go as temporary files with external data. `random_feeds` gives the seeded
inputs that verification, benchmarking and shape probing run on.

`configured(device, threads)` sets, for the sessions `session` builds inside it, the execution
provider (`--device`: the CPU provider, or CUDA with the CPU provider as fallback, from
`providers.PROVIDER_TABLE`) and the intra-op threads (a worker process gets its share);
`check_device` says at once, before any work, when the device asked for cannot be used.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np
import onnx

from .. import io
from ..analysis.inputs import real_inputs
from ..errors import UsageError
from . import providers

DEVICES = ("cpu", "cuda")          # --device: where onnxruntime runs the data path (and torch fine-tunes)
# what sessions get when no provider is named: the device and intra-op threads of the run in progress
SETTINGS = {"device": "cpu", "threads": 0}


class OrtModel:
    """What onnxruntime is given for a model, as `source`.

    A path stays a path. A proto below `io.PROTOBUF_LIMIT` (read at call time) becomes its
    serialized bytes. A larger one cannot be serialized, so it is written once into a private
    temporary folder with its tensors as external data (`io.TemporaryModelFile`) and `source` is
    that file's path; the folder is removed by `close()`, at the end of a `with` block, or when
    this object is garbage-collected.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike):
        self.temp = None
        if isinstance(model, (str, os.PathLike)):
            self.source: bytes | str = str(model)
        elif io.too_big(model):
            self.temp = io.TemporaryModelFile(model)
            self.source = self.temp.path
        else:
            self.source = model.SerializeToString()

    @property
    def is_path(self) -> bool:
        """True when `source` is a file path (a path given, or a temporary copy)."""
        return isinstance(self.source, str)

    def close(self) -> None:
        """Remove the temporary copy, if any."""
        if self.temp is not None:
            self.temp.close()

    def __enter__(self) -> "OrtModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def configured(device: str = "cpu", threads: int = 0):
    """Inside the block, `session` builds sessions on `device` ("cpu" or "cuda") with `threads`
    intra-op threads (0: onnxruntime's default); the settings before are restored after it."""
    before = dict(SETTINGS)
    SETTINGS.update(device=str(device).lower(), threads=int(threads))
    try:
        yield
    finally:
        SETTINGS.update(before)


def session_providers(device: str | None = None) -> list[str]:
    """The provider list a session on `device` (default: the configured one) gets, fallbacks last."""
    return list(providers.provider(device or SETTINGS["device"]).session)


def check_device(device: str) -> None:
    """Fail at once, in one line, when onnxruntime cannot run on `device`: an unknown name, no
    CUDA provider in this onnxruntime (the [gpu] extra missing), or the provider present but no
    GPU it can use (onnxruntime would fall back to the CPU without saying so).

    Raises:
        UsageError: the problem, with what to do.
    """
    device = str(device).lower()
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}'; choose cpu or cuda")
    if device == "cpu":
        return
    import onnxruntime as ort

    record = providers.provider(device)
    if record.ort_name not in ort.get_available_providers():
        raise UsageError(f"--device {device}: this onnxruntime has no {record.display} provider "
                         f"({record.hint}: pip install 'onnxprune[gpu]'); use --device cpu")
    probe = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    try:
        with warnings.catch_warnings():     # onnxruntime warns as it falls back; the error below says it once
            warnings.simplefilter("ignore")
            used = session(probe, threads=1, device=device).get_providers()
    except Exception as exc:   # a broken CUDA install raises from the session constructor
        raise UsageError(f"--device {device}: onnxruntime could not start its {record.display} provider "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); use --device cpu") from None
    if record.ort_name not in used:
        raise UsageError(f"--device {device}: onnxruntime's {record.display} provider found no usable GPU; "
                         f"use --device cpu")


def session(model: onnx.ModelProto | str | OrtModel, provider: str | None = None, threads: int | None = None,
            device: str | None = None):
    """An onnxruntime session for a model (proto, path or `OrtModel`), quiet and deterministic.

    `provider` (onnxruntime's name) runs it there alone; without one it runs on `device` (default:
    the configured one, see `configured`) with that device's fallbacks. `threads` defaults to the
    configured intra-op threads. Protos above the protobuf limit go through a temporary file (see
    `OrtModel`), removed once the session is built: onnxruntime has read (or mapped) the weights by then.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = SETTINGS["threads"] if threads is None else threads
    if threads:
        opts.intra_op_num_threads = threads
    chosen = [provider] if provider else session_providers(device)
    if isinstance(model, OrtModel):
        return ort.InferenceSession(model.source, opts, providers=chosen)
    with OrtModel(model) as src:
        return ort.InferenceSession(src.source, opts, providers=chosen)


def random_feeds(model: onnx.ModelProto, input_shapes: dict[str, list[int]], batch: int = 2,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every real input: normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in real_inputs(model):
        shape = list(input_shapes[vi.name])
        dims = vi.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            shape[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) > 0.5
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds
