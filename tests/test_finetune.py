"""Fine-tuning (`--finetune`, `onnxprune finetune`): conversion to torch and back, the training
loop's guarantees, and the errors that come before any work. Needs the [finetune] extra (torch,
onnx2torch); without it only the missing-extra tests run."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "models"
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnx2torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="the [finetune] extra (torch, onnx2torch) is not installed")


def _perturb(bridge, seed=0, scale=0.05):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bridge.trainable():
            p.add_(scale * torch.randn(p.shape, generator=gen) * (p.abs().mean() + 1e-3))


def _feeds(model, batch=2, seed=0):
    from onnxprune.analysis import graph
    from onnxprune.runtime.sessions import random_feeds

    return random_feeds(model, graph.fixed_input_shapes(model, None), batch=batch, seed=seed)


@needs_torch
@pytest.mark.parametrize("name", ["resnet_style", "mobilenetv3_style", "densenet_style", "inception_style",
                                  "unet_style", "yolo_style", "vgg_style", "resnet_style_definit",
                                  "yolo_style_definit", "densenet_style_definit"])
def test_round_trip_on_exported_models(name):
    """Converted, the torch module reproduces the ONNX model; after a change of every trainable
    tensor, the written-back ONNX reproduces the changed module (and differs from the input)."""
    from onnxprune.finetuning.bridge import Bridge, check_agreement, relative_errors
    from onnxprune.runtime.sessions import session

    model = onnx.load(MODELS / f"{name}.onnx")
    feeds = _feeds(model)
    bridge = Bridge(model, name)
    assert bridge.params, "no trainable tensor found"
    assert check_agreement(bridge, model, feeds, "converted") <= 1e-4
    _perturb(bridge)
    written = bridge.write_back()
    assert check_agreement(bridge, written, feeds, "written back") <= 1e-4
    before, after = session(model).run(None, feeds), session(written).run(None, feeds)
    assert max(relative_errors(before, after)) > 1e-3    # the change did reach the ONNX file
    # the graph is the one given: same nodes, same initializer names and shapes
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in model.graph.node]
    assert {i.name: tuple(i.dims) for i in written.graph.initializer} == \
        {i.name: tuple(i.dims) for i in model.graph.initializer}


def _gemm_model(trans_b: int, alpha: float, beta: float, bias_2d: bool, shared: bool, constant_weight: bool):
    """Conv -> (Identity of) BN -> Relu -> GAP -> Flatten -> Gemm, with the variations asked for."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "shift"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "bn_mean"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_var")]
    nodes = []
    weight = rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    bias = rng.standard_normal((1, 5) if bias_2d else (5,)).astype(np.float32)
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["fc_w_c"], value=numpy_helper.from_array(weight, "v")))
        nodes.append(helper.make_node("Identity", ["fc_w_c"], ["fc_w"]))
    else:
        inits.append(numpy_helper.from_array(weight, "fc_w"))
    inits.append(numpy_helper.from_array(bias, "fc_b"))
    nodes += [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c", "scale", "shift", "bn_mean", "bn_var"], ["b"]),
              helper.make_node("Relu", ["b"], ["r"])]
    if shared:     # the BN shift read again by an Add: one initializer, two readers
        nodes.append(helper.make_node("Add", ["r", "shift_4d"], ["r2"]))
        inits.append(numpy_helper.from_array(np.zeros((1, 4, 1, 1), np.float32), "shift_4d"))
        nodes.append(helper.make_node("Mul", ["r2", "scale_4d"], ["r3"]))
        inits.append(numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "scale_4d"))
        nodes.append(helper.make_node("Add", ["r3", "shift_4d"], ["r4"]))
        last = "r4"
    else:
        last = "r"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=trans_b, alpha=alpha, beta=beta)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_torch
@pytest.mark.parametrize("trans_b,alpha,beta,bias_2d,shared,constant_weight", [
    (1, 1.0, 1.0, False, False, False), (0, 1.0, 1.0, False, False, False), (0, 0.5, 2.0, True, False, False),
    (1, 1.0, 1.0, False, True, False), (0, 1.0, 1.0, True, True, True)])
def test_write_back_layouts(trans_b, alpha, beta, bias_2d, shared, constant_weight):
    """Gemm transB 0/1, alpha/beta != 1, a [1, N] bias, an initializer read twice (onnx2torch
    alone raises KeyError on it), weights behind Constant + Identity: the trained values land
    where the graph reads them."""
    from onnxprune.finetuning.bridge import Bridge, check_agreement

    model = _gemm_model(trans_b, alpha, beta, bias_2d, shared, constant_weight)
    onnx.checker.check_model(model)
    feeds = _feeds(model, batch=3)
    bridge = Bridge(model)
    check_agreement(bridge, model, feeds, "converted")
    trained = {p.origin.name for p in bridge.params}
    assert {"w", "fc_w" if not constant_weight else "fc_w_c", "fc_b", "scale", "shift"} <= trained
    _perturb(bridge, scale=0.2)
    written = bridge.write_back()
    check_agreement(bridge, written, feeds, "written back")
    assert written.graph.node[0].op_type == model.graph.node[0].op_type
    assert len(written.graph.node) == len(model.graph.node)


@needs_torch
def test_shared_weight_stays_frozen():
    """A weight read by two Convs would have to be written back as two values: it is not trained."""
    from onnxprune.finetuning.bridge import Bridge

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [w])
    bridge = Bridge(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert bridge.frozen == ["w"] and not bridge.params


def _shrink_model():
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Shrink", ["c"], ["y"], lambd=0.5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_torch
def test_unconvertible_op_is_named_before_pruning(tmp_path):
    path = tmp_path / "shrink.onnx"
    onnx.save(_shrink_model(), path)
    result = CliRunner().invoke(main, [str(path), "--calib", "random", "--finetune", "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        f"error: {path}: cannot be fine-tuned: onnx2torch cannot convert op Shrink (version 9)"
    assert not (tmp_path / "o.onnx").exists()


def test_finetune_without_extra_fails_before_any_work(tmp_path, monkeypatch):
    """Without torch: one line naming the extra, before the model is even read."""
    import onnxprune.finetuning.bridge as bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(bridge.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    missing = tmp_path / "not_read.onnx"     # does not exist: the check comes before loading
    result = CliRunner().invoke(main, [str(missing), "--calib", "random", "--finetune"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --finetune needs torch: {bridge.EXTRA_HINT}"
    result = CliRunner().invoke(main, ["finetune", str(missing), str(missing), "--calib", "random"])
    assert result.exit_code == 1 and "needs torch" in result.output and "pip install" in result.output


@pytest.mark.parametrize("args,message", [
    (["--finetune"], "--finetune needs calibration data"),
    (["--finetune", "--calib", "random", "--augment", "mirror"], "unknown augmentation 'mirror'"),
])
def test_finetune_option_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, [str(ROOT / "models" / "fmnist_resnet.onnx"), *args,
                                       "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2 and message in result.output     # usage errors
    assert not (tmp_path / "o.onnx").exists()


@needs_torch
def test_cuda_without_gpu_fails_at_once(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(main, [str(tmp_path / "absent.onnx"), "--calib", "random", "--finetune",
                                       "--device", "cuda"])
    assert result.exit_code == 1 and "no CUDA device" in result.output


def _tiny_pruned(tmp_path):
    """The resnet-style test model pruned at ratio 0.5 without recovery, and random calibration data."""
    from onnxprune import io, pipeline

    original = MODELS / "resnet_style.onnx"
    result = pipeline.prune(str(original), criterion="l1", ratio=0.5, verify=False, recover=False)
    pruned = tmp_path / "pruned.onnx"
    io.save(result.model, pruned)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, input=rng.standard_normal((48, 3, 32, 32)).astype(np.float32))
    return original, pruned, data


@needs_torch
def test_result_never_worse_and_deterministic(tmp_path):
    """The result's held-out loss is never above its input's; the same seed gives the same file;
    the written model reproduces the torch module (the step records the agreement)."""
    from onnxprune.finetuning import finetune

    original, pruned, data = _tiny_pruned(tmp_path)
    runs = [finetune(str(original), str(pruned), str(data), epochs=3, finetune_batch=8, seed=3) for _ in range(2)]
    step = runs[0].step
    assert step["epochs_run"] >= 1 and len(step["held_out_loss"]) == step["epochs_run"]
    assert step["loss_after"] <= step["loss_before"]
    if step["kept"]:
        assert step["onnx_torch_relative_error"] <= 1e-4
        assert min(step["held_out_loss"]) < step["loss_before"]
    else:
        assert runs[0].model.SerializeToString() == onnx.load(pruned).SerializeToString()
    assert runs[0].model.SerializeToString() == runs[1].model.SerializeToString()


@needs_torch
def test_training_lowers_held_out_loss(tmp_path):
    """On a model whose loss training can lower (pruned without recovery), it does, and the kept
    model is the one the held-out loss chose."""
    from onnxprune.calibration.activations import outputs
    from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
    from onnxprune.verification.evaluate import Reference, fidelity_loss
    from onnxprune.finetuning import finetune
    from onnxprune.analysis import graph

    original, pruned, data = _tiny_pruned(tmp_path)
    result = finetune(str(original), str(pruned), str(data), epochs=4, finetune_batch=8, lr=3e-3, refit=False)
    step = result.step
    assert step["kept"], step
    assert step["loss_after"] < step["loss_before"] and "refit" not in step
    # the reported loss is the written ONNX's, measured again here in onnxruntime
    model = onnx.load(original)
    calib = CalibData(CalibConfig(str(data)), input_specs(model, graph.fixed_input_shapes(model, None)))
    reference = Reference(outputs(model, calib, "holdout"))
    assert fidelity_loss(reference, outputs(result.model, calib, "holdout")) == pytest.approx(step["loss_after"],
                                                                                           rel=1e-6)
    # the refit (the default) repeats the schedule up to the best epoch on both splits (48 images);
    # the model it returns is the one whose loss on the (now seen) held-out images it reports
    refitted = finetune(str(original), str(pruned), str(data), epochs=4, finetune_batch=8, lr=3e-3)
    refit = refitted.step["refit"]
    assert refitted.step["loss_after"] == step["loss_after"]
    assert refit["images"] == 48 and refit["epochs"] == step["best_epoch"] == len(refit["train_loss"])
    seen = fidelity_loss(reference, outputs(refitted.model, calib, "holdout"))
    assert seen == pytest.approx(refit["held_out_loss_seen"], rel=1e-6)
    assert refit["kept"] == (seen < step["loss_before"])
    assert (refitted.model.SerializeToString() == result.model.SerializeToString()) != refit["kept"]


@needs_torch
def test_cli_prune_finetune_and_finetune_command(tmp_path):
    from onnxprune import io

    original, pruned, data = _tiny_pruned(tmp_path)
    out = tmp_path / "ft.onnx"
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["finetune", str(original), str(pruned), "--calib", str(data),
                                       "--epochs", "2", "--finetune-batch", "8", "-o", str(out),
                                       "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "fine-tuning: held-out loss" in result.output and out.exists() and report.exists()
    onnx.checker.check_model(str(out))
    assert oct(os.stat(out).st_mode & 0o777) != oct(0)
    out2 = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, [str(original), "--criterion", "l1", "--calib", str(data), "--finetune",
                                       "--epochs", "2", "--finetune-batch", "8", "--preset", "fast",
                                       "-o", str(out2), "--report", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert re.search(r"^ +finetune +[0-9.e+-]+ -> [0-9.e+-]+ +(kept|rejected)", result.output, re.M), result.output
    import json
    rep = json.loads((tmp_path / "p.json").read_text())
    step = [s for s in rep["recovery"] if s["step"] == "finetune"][0]
    assert step["epochs_run"] == 2 and rep["options"]["finetune"]["epochs"] == 2
    assert rep["forward_passes"]["finetune"] > 0
    io.load(out2)


def test_augment_parsing_and_shift():
    from onnxprune.calibration.calib import InputSpec
    from onnxprune.finetuning.augment import augment, parse_augment

    assert parse_augment("default") == ("shift",) and parse_augment("none") == ()
    assert parse_augment("shift,flip,crop") == ("shift", "flip", "crop")
    with pytest.raises(OnnxPruneError):
        parse_augment("rotate")
    spec = InputSpec("x", (1, 16, 16), np.dtype(np.float32), "NCHW", 1, 16, 16)
    x = np.random.default_rng(0).standard_normal((6, 1, 16, 16)).astype(np.float32)
    same = augment({"x": x}, [spec], (), np.random.default_rng(0))["x"]
    assert same is x
    moved = augment({"x": x}, [spec], ("shift",), np.random.default_rng(0))["x"]
    assert moved.shape == x.shape and moved.dtype == x.dtype and not np.array_equal(moved, x)
    # a shift keeps the image's content: each augmented image equals the original moved by some (dy, dx)
    for a, b in zip(moved[:, 0], x[:, 0]):
        assert any(np.array_equal(a[max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)],
                                  b[max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)])
                   for dy in range(-1, 2) for dx in range(-1, 2))
    flipped = augment({"x": x}, [spec], ("flip",), np.random.default_rng(1))["x"]
    assert all(np.array_equal(f, o) or np.array_equal(f, o[:, :, ::-1]) for f, o in zip(flipped, x))


def test_core_imports_no_torch():
    """The core (prune, the CLI, the fine-tuning package's front) imports without torch."""
    import subprocess
    import sys

    code = ("import sys, onnxprune.pipeline, onnxprune.cli, onnxprune.finetuning, onnxprune; onnxprune.finetune; "
            "assert 'torch' not in sys.modules and 'onnx2torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _bn_model(with_bn: bool = True):
    """Conv -> BN -> Relu -> Conv -> BN -> GAP -> Flatten -> Gemm, BN statistics far from N(0, 1)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])]
    last = "c1"
    if with_bn:
        for name, c in (("bn1", 6), ("bn2", 4)):
            inits += [numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{name}_s"),
                      numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{name}_b"),
                      numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.5 + 0.3, f"{name}_m"),
                      numpy_helper.from_array(rng.uniform(0.2, 3, c).astype(np.float32), f"{name}_v")]
    if with_bn:
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["b1"]))
        last = "b1"
    nodes += [helper.make_node("Relu", [last], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1])]
    last = "c2"
    if with_bn:
        nodes.append(helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["b2"]))
        last = "b2"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if with_bn:
        _set_bn_statistics(model, rng)
    return model


def _set_bn_statistics(model, rng):
    """BN running statistics of a 'trained' model: those of its inputs on some data (smooth
    images around 1.0), BN by BN in order, as training leaves them."""
    from onnxprune.runtime.sessions import session

    x = rng.standard_normal((256, 1, 12, 12)).astype(np.float32)
    x = (1.0 + 0.6 * (x + np.roll(x, 1, 2) + np.roll(x, 1, 3)) / 3).astype(np.float32)
    inits = {i.name: i for i in model.graph.initializer}
    for conv, bn in (("c1", "bn1"), ("c2", "bn2")):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(helper.make_tensor_value_info(conv, TensorProto.FLOAT, None))
        value = session(probe).run([conv], {"x": x})[0]
        inits[f"{bn}_m"].CopyFrom(numpy_helper.from_array(value.mean((0, 2, 3)).astype(np.float32), f"{bn}_m"))
        inits[f"{bn}_v"].CopyFrom(numpy_helper.from_array(value.var((0, 2, 3)).astype(np.float32), f"{bn}_v"))


@needs_torch
def test_synthetic_inputs_match_bn_statistics():
    """The inputs made for a model reproduce its BN running statistics (within 10% of a std on
    average, from several stds at the random start), measured again here in onnxruntime."""
    from onnxprune.analysis import graph
    from onnxprune.calibration.calib import input_specs
    from onnxprune.finetuning.synthetic import synthesize
    from onnxprune.runtime.sessions import session

    model = _bn_model()
    specs = input_specs(model, graph.fixed_input_shapes(model, {"x": [1, 1, 12, 12]}))
    arrays, info = synthesize(model, specs, samples=48, seed=0, steps=150, batch=48)
    assert arrays["x"].shape == (48, 1, 12, 12) and arrays["x"].dtype == np.float32
    assert info["bn_match_error"] < 0.1 < info["bn_match_error_start"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in ("c1", "c2"):
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    _, c1, c2 = session(probe).run(None, {"x": arrays["x"]})
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for value, bn in ((c1, "bn1"), (c2, "bn2")):
        sd = np.sqrt(inits[f"{bn}_v"])
        assert np.abs(value.mean((0, 2, 3)) - inits[f"{bn}_m"]).mean() / sd.mean() < 0.15
        assert np.abs(value.std((0, 2, 3)) / sd - 1).mean() < 0.15


@needs_torch
def test_synthetic_needs_batchnorm():
    from onnxprune.analysis import graph
    from onnxprune.calibration.calib import input_specs
    from onnxprune.finetuning.synthetic import synthesize

    model = _bn_model(with_bn=False)
    specs = input_specs(model, graph.fixed_input_shapes(model, {"x": [1, 1, 12, 12]}))
    with pytest.raises(OnnxPruneError, match="no BatchNormalization"):
        synthesize(model, specs, samples=4)


def test_calib_synthetic_without_extra(tmp_path, monkeypatch):
    import onnxprune.finetuning.bridge as bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(bridge.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = CliRunner().invoke(main, [str(tmp_path / "absent.onnx"), "--calib", "synthetic"])
    assert result.exit_code == 1 and result.output.strip() == f"error: --calib synthetic needs torch: {bridge.EXTRA_HINT}"


def test_cli_and_api_defaults_agree():
    """The CLI's and `prune`'s fine-tuning defaults are FinetuneConfig's (listed in the CLI so that
    --help imports nothing heavy)."""
    import dataclasses
    import inspect

    from onnxprune.cli import prune as prune_command
    from onnxprune.config import Recovery
    from onnxprune.finetuning import FinetuneConfig, finetune

    config = FinetuneConfig()
    cli = {p.name: p.default for p in prune_command.params}
    api = {f.name: f.default for f in dataclasses.fields(Recovery)}    # `prune`'s keywords: PruneConfig's parts
    tune = inspect.signature(finetune).parameters
    for cli_name, field in (("epochs", "epochs"), ("lr", "lr"), ("finetune_batch", "batch_size"),
                            ("device", "device")):
        assert cli[cli_name] == api[cli_name] == tune[cli_name].default == getattr(config, field)
    assert FinetuneConfig(augment=cli["augment"]).augment == config.augment
    assert tune["bn"].default == config.bn and tune["temperature"].default == config.temperature


def test_feature_hints_cover_every_channel_tensor():
    """hints_for lists every channel tensor of the pruning (graph inputs excepted) with the kept
    channels; the ones marked read are exactly those a Conv/Gemm reads (the default matches those)."""
    from onnxprune import io
    from onnxprune.analysis import fold, graph, groups
    from onnxprune.finetuning import hints_for

    model = fold.normalise(io.load(MODELS / "resnet_style.onnx"))
    an = groups.analyse(model, graph.infer_shapes(model, graph.fixed_input_shapes(model, None)))
    removed = np.arange(0, len(an.unit_blocked), 2)
    removed = removed[~an.unit_blocked[removed]]
    hints = hints_for(an, removed)
    reads = an.read_tensors()
    assert {k for k, v in hints.items() if v[2]} == set(reads) and len(hints) > len(reads)
    inputs = {i.name for i in model.graph.input}
    assert not inputs & set(hints)
    kept = an.kept_channels(removed)
    for name, (axis, channels, _) in hints.items():
        assert axis == an.tensors[name].axis
        assert (channels is None) == (name not in kept)
        if channels is not None:
            assert len(channels) < an.tensors[name].size
