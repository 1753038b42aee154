"""The command line: prune, analyse, plans, reports, and error handling (exit codes, one-line errors)."""

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from helpers import make_model, tensor
from onnxprune import criteria
from onnxprune.cli import CRITERIA, main

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_criteria_list_matches_registry():
    assert set(CRITERIA) == set(criteria.names())


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "analyse" in result.output and "prune" in result.output


def test_prune_writes_model_report_and_plan(tmp_path):
    out, rep, plan = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "plan.json"
    before = sha(RESNET)
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.5", "-o", out, "--report", rep,
                    "--save-plan", plan, "--show", "groups")
    assert result.exit_code == 0, result.output
    assert sha(RESNET) == before
    onnx.checker.check_model(onnx.load(out))
    report = json.load(open(rep))
    assert report["schema_version"] == 1
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["verification"]["valid"]
    assert "channel groups" in result.output and "parameters" in result.output
    # the plan round-trips: applying it gives the same model bytes
    out2 = tmp_path / "p2.onnx"
    result = invoke(RESNET, "--plan", plan, "-o", out2)
    assert result.exit_code == 0, result.output
    assert sha(out) == sha(out2)


def test_plan_is_editable(tmp_path):
    plan = tmp_path / "plan.json"
    assert invoke(RESNET, "--ratio", "0.5", "-o", tmp_path / "a.onnx", "--save-plan", plan).exit_code == 0
    data = json.load(open(plan))
    first = data["groups"][0]
    first["keep"] = list(range(first["size"]))  # keep everything in the first group
    json.dump(data, open(plan, "w"))
    rep = tmp_path / "r.json"
    assert invoke(RESNET, "--plan", plan, "-o", tmp_path / "b.onnx", "--report", rep).exit_code == 0
    groups = {g["id"]: g for g in json.load(open(rep))["groups"]}
    assert groups[first["group"]]["kept"] == first["size"]


def test_plan_for_another_model_is_refused(tmp_path):
    plan = tmp_path / "plan.json"
    assert invoke(RESNET, "-o", tmp_path / "a.onnx", "--save-plan", plan).exit_code == 0
    other = os.path.join(HERE, "models", "vgg_style.onnx")
    result = invoke(other, "--plan", plan, "-o", tmp_path / "b.onnx")
    assert result.exit_code == 1
    assert "plan" in result.stderr and "Traceback" not in result.output


def test_python_module_entry_point(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxprune", RESNET, "-o", str(out), "--ratio", "0.3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_global_ignore_min_channels(tmp_path):
    rep = tmp_path / "r.json"
    result = invoke(RESNET, "--global", "--ratio", "0.6", "--max-ratio", "0.8", "--min-channels", "4",
                    "--ignore", "/stem*", "-o", tmp_path / "g.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    report = json.load(open(rep))
    for g in report["groups"]:
        if g["prunable"] and g["kept"] < g["size"]:
            assert g["kept"] >= 4 and g["size"] - g["kept"] <= int(0.8 * g["size"])
    assert any("ignored by --ignore" in s["reason"] for s in report["skipped"])


def test_analyse_prints_groups_and_json():
    result = invoke("analyse", RESNET)
    assert result.exit_code == 0
    assert "prunable" in result.output
    result = invoke("analyse", RESNET, "--json")
    data = json.loads(result.output)
    assert data["groups"] and any(not g["prunable"] for g in data["groups"])


def _conv_free_model(path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 3])], [tensor("y", [1, 3])])
    onnx.save(model, path)


def _quantized_model(path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Conv", ["d", "w"], ["y"])]
    inits = {"s": np.float32(0.1), "z": np.uint8(0), "w": np.ones((2, 3, 1, 1), np.float32)}
    onnx.save(make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 2, 4, 4])], inits), path)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not_onnx", "truncated", "no_conv",
                                  "quantized", "ratio_high", "ratio_negative", "ratio_nan", "output_is_input",
                                  "output_dir_missing", "dynamic_without_shape", "nan_weights"])
def test_bad_input_one_line_exit_1(tmp_path, case):
    model = tmp_path / "m.onnx"
    shutil.copy(RESNET, model)
    out = tmp_path / "out.onnx"
    args = [model, "-o", out]
    if case == "missing":
        args[0] = tmp_path / "nope.onnx"
    elif case == "directory":
        args[0] = tmp_path
    elif case == "empty":
        model.write_bytes(b"")
    elif case == "not_onnx":
        model.write_text("hello, I am not a protobuf\n" * 10)
    elif case == "truncated":
        model.write_bytes(open(RESNET, "rb").read()[:5000])
    elif case == "no_conv":
        _conv_free_model(model)
    elif case == "quantized":
        _quantized_model(model)
    elif case == "ratio_high":
        args += ["--ratio", "1.0"]
    elif case == "ratio_negative":
        args += ["--ratio", "-0.1"]
    elif case == "ratio_nan":
        args += ["--ratio", "nan"]
    elif case == "output_is_input":
        args[2] = model
    elif case == "output_dir_missing":
        args[2] = tmp_path / "no" / "such" / "dir.onnx"
    elif case == "nan_weights":
        m = onnx.load(RESNET)
        w = next(i for i in m.graph.initializer if len(i.dims) == 4)
        arr = onnx.numpy_helper.to_array(w).copy()
        arr.flat[0] = np.nan
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        onnx.save(m, model)
    elif case == "dynamic_without_shape":
        m = onnx.load(RESNET)
        m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
        m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
        onnx.save(m, model)
    before = sha(model) if model.exists() and model.is_file() else None
    result = invoke(*args)
    # a ratio outside [0, 1) is a usage error (exit 2, before any file is read); the rest are the input's
    assert result.exit_code == (2 if case.startswith("ratio_") else 1), result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists() or case == "output_is_input"
    if before:
        assert sha(model) == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_dynamic_dims_with_input_shape(tmp_path):
    model = tmp_path / "m.onnx"
    m = onnx.load(RESNET)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    onnx.save(m, model)
    result = invoke(model, "-o", tmp_path / "o.onnx", "--input-shape", "input:1,3,32,32")
    assert result.exit_code == 0, result.output
    dims = onnx.load(tmp_path / "o.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "H" and dims[3].dim_param == "W"


def test_bad_input_shape_is_usage_error(tmp_path):
    result = invoke(RESNET, "-o", tmp_path / "o.onnx", "--input-shape", "input:1,x")
    assert result.exit_code == 2


def test_eval_command_reports_agreement_and_accuracy(tmp_path):
    out = tmp_path / "p.onnx"
    assert invoke(RESNET, "--ratio", "0.3", "-o", out).exit_code == 0
    data = tmp_path / "test.npz"
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.standard_normal((20, 3, 32, 32)).astype(np.float32), labels=rng.integers(0, 10, 20))
    result = invoke("eval", RESNET, out, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["outputs"]["output"]
    for key in ("accuracy", "accuracy_original", "top1_agreement", "top5_agreement", "kl", "cosine"):
        assert key in metrics
    assert 0 <= metrics["top1_agreement"] <= 1 and metrics["kl"] >= 0
    same = json.loads(invoke("eval", RESNET, RESNET, "--data", data, "--json").stdout)["outputs"]["output"]
    assert same["top1_agreement"] == 1.0 and abs(same["kl"]) < 1e-9


def test_prune_with_calibration_prints_holdout_metrics(tmp_path):
    data = tmp_path / "cal.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32))
    rep = tmp_path / "r.json"
    result = invoke(RESNET, "--criterion", "apoz", "--calib", data, "-o", tmp_path / "p.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    report = json.load(open(rep))
    assert report["calibration"]["holdout"] == 8
    assert report["recovery"] and report["holdout"]["output"]["top1_agreement"] >= 0
    assert "held-out calibration images (8), pruned model against the original" in " ".join(result.output.split())


def test_same_inputs_and_seed_give_identical_files(tmp_path):
    data = tmp_path / "cal.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    outs = []
    for i in range(2):
        out = tmp_path / f"p{i}.onnx"
        result = invoke(RESNET, "--calib", data, "--target-macs", "0.5", "--seed", "3", "-o", out)
        assert result.exit_code == 0, result.output
        outs.append(sha(out))
    assert outs[0] == outs[1]


def test_separate_processes_give_identical_files(tmp_path):
    """No result may depend on Python's per-process string hashing (set iteration order)."""
    import subprocess
    import sys

    root = os.path.dirname(HERE)
    outs = []
    for hash_seed in ("1", "2"):   # thinet drew its samples in set order before (a different file per process)
        out = tmp_path / f"p{hash_seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-m", "onnxprune", os.path.join(root, "models", "fmnist_resnet.onnx"),
                               "--criterion", "thinet", "--calib", os.path.join(root, "calib_data", "fmnist_calib.npz"),
                               "--calib-samples", "64", "--no-recover", "--target-macs", "0.5", "-o", str(out)],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs.append(sha(out))
    assert outs[0] == outs[1]


def test_prune_then_bench(tmp_path):
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.5", "-o", tmp_path / "p.onnx", "--bench")
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output.lower()


def test_a_collapsed_classifier_is_called_out(tmp_path):
    # l1 at half the MACs without recovery: the demo classifier answers one class for everything
    rep = tmp_path / "r.json"
    result = invoke("models/fmnist_resnet.onnx", "--criterion", "l1", "--allocate", "uniform", "--target-macs", "0.5",
                    "--calib", "calib_data/fmnist_calib.npz", "--calib-samples", "128", "--no-recover",
                    "-o", tmp_path / "p.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    report = json.loads(rep.read_text())
    assert report["holdout"]["logits"]["classes_predicted"] == [10, 1]
    assert any("predicts one class for every held-out sample (the original predicts 10)" in n for n in report["notes"])
    evaluated = invoke("eval", "models/fmnist_resnet.onnx", tmp_path / "p.onnx", "--data", "calib_data/fmnist_test.npz",
                       "--samples", "200")
    assert evaluated.exit_code == 0 and "predicts one class for every sample" in " ".join(evaluated.output.split())
    # with recovery the same pruning is usable and nothing is said
    result = invoke("models/fmnist_resnet.onnx", "--criterion", "l1", "--allocate", "uniform", "--target-macs", "0.5",
                    "--calib", "calib_data/fmnist_calib.npz", "--calib-samples", "128", "-o", tmp_path / "q.onnx",
                    "--report", rep)
    report = json.loads(rep.read_text())
    assert report["holdout"]["logits"]["classes_predicted"][1] > 1
    assert not any("held-out" in n for n in report["notes"])


@pytest.mark.parametrize("criterion", ["l1", "mean_act"])
def test_calibration_data_turns_on_sensitivity_allocation_for_every_criterion(tmp_path, criterion):
    import onnxprune

    with_data = onnxprune.prune("models/fmnist_resnet.onnx", criterion=criterion, target_macs=0.5,
                                calib="calib_data/fmnist_calib.npz", calib_samples=64, recover=False)
    assert with_data.report["allocation"]["method"] == "sensitivity"
    assert with_data.report["allocation"]["curves"]
    if criterion == "l1":   # data-free criterion without data: uniform ratios
        without = onnxprune.prune("models/fmnist_resnet.onnx", criterion=criterion, target_macs=0.5)
        assert without.report["allocation"]["method"] == "uniform"


def test_order_check_line_and_no_order_check_flag(tmp_path):
    rep = tmp_path / "r.json"
    common = ("models/fmnist_resnet.onnx", "--target-macs", "0.5", "--calib", "calib_data/fmnist_calib.npz",
              "--calib-samples", "64")
    result = invoke(*common, "-o", tmp_path / "a.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    check = json.loads(rep.read_text())["allocation"]["order_check"]
    assert check["chosen"] in check["losses"] and "blend" in check["losses"]
    text = " ".join(result.output.split())
    assert "order check (which ranking prunes): held-out top-1 disagreement with the original" in text
    assert "after cheap recovery, lower is better" in text
    assert invoke(*common, "--no-order-check", "-o", tmp_path / "b.onnx", "--report", rep).exit_code == 0
    assert "order_check" not in json.loads(rep.read_text())["allocation"]
