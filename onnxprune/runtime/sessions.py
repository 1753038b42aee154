"""onnxruntime sessions and seeded inputs: how any model of the program reaches onnxruntime.

`OrtModel` is what onnxruntime is given for a model: the program's sessions are built by
`session` (bench keeps an `OrtModel` per model), so models above the protobuf limit (2 GiB), which
cannot be serialized, go as temporary files with external data. `random_feeds` gives the seeded
inputs that verification, benchmarking and shape probing run on.
"""

from __future__ import annotations

import os

import numpy as np
import onnx

from .. import io
from ..analysis.inputs import real_inputs


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


def session(model: onnx.ModelProto | str | OrtModel, provider: str = "CPUExecutionProvider", threads: int = 0):
    """An onnxruntime CPU session for a model (proto, path or `OrtModel`), quiet and deterministic.

    Protos above the protobuf limit go through a temporary file (see `OrtModel`), removed once
    the session is built: onnxruntime has read (or mapped) the weights by then.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, OrtModel):
        return ort.InferenceSession(model.source, opts, providers=[provider])
    with OrtModel(model) as src:
        return ort.InferenceSession(src.source, opts, providers=[provider])


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
