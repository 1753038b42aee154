"""--workers, --ray and --device: the same file whatever runs the passes, dead workers retried,
and the CUDA device refused at once where onnxruntime cannot use it.

The byte-identity tests prune a small residual test model (default preset: sensitivity probes
and the order check, the stages handed to the pool) with 48 random calibration inputs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import numpy as np
import pytest

import onnxprune
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime import pool, sessions

MODEL = os.path.join(os.path.dirname(__file__), "models", "resnet_style.onnx")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "cal.npz"
    np.savez(path, input=np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32))
    return str(path)


def pruned(calib, **kw):
    result = onnxprune.prune(MODEL, ratio=0.5, calib=calib, calib_samples=48, **kw)
    return hashlib.sha256(result.model.SerializeToString()).hexdigest(), result.report


@pytest.fixture(scope="module")
def serial(calib):
    return pruned(calib)


def test_two_workers_write_the_serial_file(calib, serial):
    digest, report = pruned(calib, workers=2)
    assert report["workers"]["backend"] == "processes" and report["workers"]["workers"] == 2
    assert report["workers"]["tasks"] > 0          # the probes and candidates did go to the workers
    assert report["forward_passes"] == serial[1]["forward_passes"]
    assert digest == serial[0]


def kill_once(marker, task):
    """A task that kills its own worker process the first time task 2 runs (marked by a file)."""
    if task == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return task * task


def always_dies(_, task):
    """A task whose worker process always dies."""
    os._exit(3)


def fails(_, task):
    """A task that raises the program's own error."""
    raise OnnxPruneError(f"task {task} failed")


def test_a_killed_worker_is_replaced_and_its_task_rerun(tmp_path):
    workers = pool.Processes(2, threads=1)
    try:
        assert workers.map(kill_once, range(6), str(tmp_path / "killed")) == [t * t for t in range(6)]
        assert (tmp_path / "killed").exists() and workers.retries == 1
        assert workers.map(kill_once, iter(range(3)), str(tmp_path / "killed")) == [0, 1, 4]   # the pool goes on
    finally:
        workers.close()


def test_a_worker_that_keeps_dying_is_a_clear_error():
    workers = pool.Processes(2, threads=1)
    with pytest.raises(OnnxPruneError, match=r"died 3 times running probe task 0 \(exit code 3\)"):
        workers.map(always_dies, [0], None, "probe")
    assert workers.pool == []          # every worker stopped: no result of that map is used


def test_a_task_error_reaches_the_caller_as_it_is():
    workers = pool.Processes(2, threads=1)
    with pytest.raises(OnnxPruneError, match="^task 1 failed$"):
        workers.map(fails, [1, 2, 3], None)      # the first failed task's error, as in the serial run


def test_a_worker_killed_mid_run_gives_the_same_file(calib, serial):
    """A worker process killed (SIGKILL) while it runs a probe: the task is rerun, the file unchanged."""
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            current = pool.current()
            busy = [w for w in getattr(current, "pool", []) if w.job is not None and w.alive()]
            if busy:
                os.kill(busy[0].process.pid, signal.SIGKILL)
                killed.append(busy[0].process.pid)
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    digest, report = pruned(calib, workers=2)
    thread.join(timeout=1)
    assert killed, "no worker was busy to be killed"
    assert report["workers"]["retries"] >= 1
    assert digest == serial[0]


def test_ray_actors_write_the_serial_file_and_survive_a_dead_actor(calib, serial, tmp_path):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install 'onnxprune[ray]')")
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    try:
        digest, report = pruned(calib, ray="auto")
        assert report["workers"]["backend"] == "ray" and report["workers"]["workers"] == 2
        assert digest == serial[0]
        import sys

        # Ray's workers cannot import this test module: its functions travel by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        actors = pool.RayActors("auto", 2)
        try:
            assert actors.map(kill_once, range(5), str(tmp_path / "killed")) == [t * t for t in range(5)]
            assert actors.retries == 1
            with pytest.raises(OnnxPruneError, match="^task 1 failed$"):      # the first failed task's, as it is
                actors.map(fails, [1, 2, 3], None)
        finally:
            actors.close()
        assert ray.is_initialized()      # a pool does not shut down a Ray it did not start
    finally:
        ray.shutdown()


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)      # import ray fails
    with pytest.raises(UsageError, match=r"--ray needs Ray: pip install 'onnxprune\[ray\]'"):
        onnxprune.prune("no/such/model.onnx", ray="auto")      # before the model is read


def test_workers_must_be_at_least_one():
    with pytest.raises(UsageError, match="--workers must be a whole number of at least 1"):
        onnxprune.prune("no/such/model.onnx", workers=0)


def test_threads_are_shared_between_workers():
    assert pool.share(2, 16) == 8 and pool.share(3, 2) == 1 and pool.share(1, 4) == 4


class Recorder:
    """Stands in for onnxruntime.InferenceSession: records the providers asked for."""

    asked: list = []

    def __init__(self, source, options, providers):
        Recorder.asked.append((list(providers), options.intra_op_num_threads))


def test_sessions_ask_for_the_cuda_provider_on_cuda(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    Recorder.asked = []
    model = MODEL
    sessions.session(model)
    with sessions.configured("cuda", threads=3):
        sessions.session(model)
        sessions.session(model, provider="CPUExecutionProvider")    # a provider named is used alone
    sessions.session(model)
    assert Recorder.asked == [(["CPUExecutionProvider"], 0),
                              (["CUDAExecutionProvider", "CPUExecutionProvider"], 3),
                              (["CPUExecutionProvider"], 3),
                              (["CPUExecutionProvider"], 0)]


def test_cuda_without_the_provider_is_refused_at_once(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError, match=r"--device cuda: this onnxruntime has no CUDA provider "
                                         r"\(install onnxruntime-gpu: pip install 'onnxprune\[gpu\]'\)"):
        onnxprune.prune("no/such/model.onnx", device="cuda")


def test_cuda_provider_without_a_gpu_is_refused(monkeypatch):
    import onnxruntime as ort

    real = ort.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("onnxruntime here has the CUDA provider: the fallback to the CPU cannot be staged")
    # the provider listed, but a session falls back to the CPU: onnxruntime found no GPU to use
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.raises(UsageError, match="--device cuda: onnxruntime's CUDA provider found no usable GPU"):
        sessions.check_device("cuda")


def test_cli_device_cuda_missing_exits_2_in_one_line(monkeypatch, tmp_path):
    import onnxruntime as ort
    from click.testing import CliRunner

    from onnxprune.cli.main import main

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    missing = tmp_path / "missing.npz"      # never read: the device is refused first
    out = CliRunner().invoke(main, [MODEL, "--calib", str(missing), "--device", "cuda",
                                    "-o", str(tmp_path / "out.onnx")])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: this onnxruntime has no CUDA provider")
    assert not (tmp_path / "out.onnx").exists()


def test_a_memory_mapped_npy_travels_to_workers_as_its_path(tmp_path):
    import pickle

    from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
    from onnxprune.pipeline import prepare

    arrays = np.random.default_rng(0).standard_normal((40, 3, 32, 32)).astype(np.float32)   # 480 KiB
    np.save(tmp_path / "x.npy", arrays)
    prep = prepare(MODEL)
    data = CalibData(CalibConfig(str(tmp_path / "x.npy"), 40), input_specs(prep.original, prep.input_shapes))
    message = pickle.dumps(data.with_score_limit(8))
    assert len(message) < 10_000                      # not the arrays
    copy = pickle.loads(message)
    assert copy.size("score") == 8
    np.testing.assert_array_equal(next(copy.batches("holdout"))["input"], next(data.batches("holdout"))["input"])


def test_an_unreachable_ray_cluster_is_one_line_and_no_model():
    pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install 'onnxprune[ray]')")
    with pytest.raises(OnnxPruneError, match=r"^--ray 127\.0\.0\.1:1: could not reach a Ray cluster \("):
        onnxprune.prune(MODEL, ray="127.0.0.1:1")      # port 1: nothing listens
