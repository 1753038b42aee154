"""Outputs made by a Concat of parts of different kinds (a YOLOv8 head: box coordinates in pixels
and Sigmoid class scores on one axis) are compared part by part (evaluate.output_parts/Reference)."""

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import make_model, run, tensor
from onnxprune.verification import evaluate
from onnxprune.verification.evaluate import Reference, compare, fidelity_loss, output_parts
from onnxprune.pipeline import prepare


def yolo_like_model():
    """x -> convA(3->8) -> Relu, then a box head convB(8->4) x 100 (pixel-sized) and a class head
    convC(8->8) -> Relu -> convD(8->3) -> Sigmoid, concatenated on axis 1: y [N, 7, 8, 8]."""
    rng = np.random.default_rng(7)
    inits = {"wa": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5,
             "wb": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
             "s": np.array(100.0, np.float32),
             "wc": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.5,
             "wd": rng.standard_normal((3, 8, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["b"], name="convB"),
             helper.make_node("Mul", ["b", "s"], ["box"]),
             helper.make_node("Conv", ["ra", "wc"], ["c"], name="convC"),
             helper.make_node("Relu", ["c"], ["rc"]),
             helper.make_node("Conv", ["rc", "wd"], ["d"], name="convD"),
             helper.make_node("Sigmoid", ["d"], ["cls"]),
             helper.make_node("Concat", ["box", "cls"], ["y"], axis=1)]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 7, 8, 8])], inits)


def test_output_parts_reads_the_concat_that_makes_an_output():
    prep = prepare(yolo_like_model(), {"x": [1, 3, 8, 8]})
    assert output_parts(prep.analysis.model, prep.analysis.shapes) == {0: (1, [4, 3])}


def test_nested_concats_on_one_axis_are_flattened_and_the_batch_axis_is_not_split():
    shapes = {"p": [1, 2, 5], "q": [1, 3, 5], "r": [1, 4, 5], "pq": [1, 5, 5], "y": [1, 9, 5],
              "z": [2, 9, 5]}
    nodes = [helper.make_node("Concat", ["p", "q"], ["pq"], axis=-2),
             helper.make_node("Concat", ["pq", "r"], ["y"], axis=1),
             helper.make_node("Concat", ["y", "y"], ["z"], axis=0)]
    model = make_model(nodes, [tensor(n, shapes[n]) for n in "pqr"], [tensor("y", shapes["y"]), tensor("z", shapes["z"])])
    assert output_parts(model, shapes) == {0: (1, [2, 3, 4])}


@pytest.fixture
def detections():
    """A YOLO-like output [N, 4 + 3, A]: boxes in pixels, Sigmoid scores; the pruned model's boxes
    move by 1% and its scores all fall to zero."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 320, size=(6, 4, 100))
    scores = 1 / (1 + np.exp(-rng.normal(-3, 2, size=(6, 3, 100))))
    ref = np.concatenate([boxes, scores], axis=1)
    out = np.concatenate([boxes * 1.01, np.zeros_like(scores)], axis=1)
    return ref, out, boxes, scores


def test_a_detector_whose_scores_fell_to_zero_is_seen_part_by_part(detections):
    ref, out, boxes, scores = detections
    whole = fidelity_loss([ref], [out])
    assert whole < 1e-3             # the boxes' squared error swamps the scores' over the whole tensor
    parts = fidelity_loss(Reference([ref], {0: (1, [4, 3])}), [out])
    box_part = ((0.01 * boxes) ** 2).sum() / (boxes ** 2).sum()
    assert parts == pytest.approx(box_part + 1.0, rel=1e-9)     # every score lost: relative error 1


def test_compare_reports_each_part(detections):
    ref, out, _, _ = detections
    metrics = compare(Reference([ref], {0: (1, [4, 3])}), [out], ["output0"])
    assert list(metrics) == ["output0[:, 0:4]", "output0[:, 4:7]"]
    assert metrics["output0[:, 4:7]"]["rel_sq_error"] == pytest.approx(1.0)
    assert metrics["output0[:, 0:4]"]["cosine"] == pytest.approx(1.0)


def test_a_reference_drops_parts_that_do_not_fit_its_arrays(detections):
    ref, out, _, _ = detections
    assert Reference([ref], {0: (1, [4, 4])}).parts == {}
    assert Reference([ref], {1: (1, [4, 3])}).parts == {}
    # a classifier output is compared as a whole (KL of its probabilities), never split
    p = np.full((4, 6), 1 / 6)
    q = np.tile([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], (4, 1))
    assert fidelity_loss(Reference([p], {0: (1, [3, 3])}), [q]) == pytest.approx(fidelity_loss([p], [q]))


def test_pruning_a_yolo_like_head_spares_the_class_branch(tmp_path, monkeypatch):
    """The class head (convC) is invisible to a whole-tensor loss; compared part by part, the
    sensitivity allocator sees what pruning it costs and the class scores stay closer to the original."""
    import onnxprune

    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32))
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    scores = run(yolo_like_model(), {"x": x})["y"][:, 4:]

    def prune():
        result = onnxprune.prune(yolo_like_model(), criterion="l1", target_macs=0.3, calib=str(path))
        kept = {g["name"]: g["kept"] for g in result.report["groups"]}
        error = float(((run(result.model, {"x": x})["y"][:, 4:] - scores) ** 2).sum() / (scores ** 2).sum())
        return result.report, kept, error

    parts_report, parts_kept, parts_error = prune()
    monkeypatch.setattr(evaluate, "output_parts", lambda model, shapes: {})     # the whole-tensor loss, as before
    whole_report, whole_kept, whole_error = prune()
    assert "y[:, 4:7]" in parts_report["holdout"] and list(whole_report["holdout"]) == ["y"]
    assert parts_kept["convC"] > whole_kept["convC"]
    assert parts_error < 0.5 * whole_error


def test_a_score_part_without_objects_is_not_judged_on_its_noise():
    """Scores near zero everywhere (held-out images without objects): tripling them is noise and
    must not weigh like losing every detection (the error is relative to at least every score
    at PART_SCORE_FLOOR)."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 320, size=(6, 4, 100))
    quiet = np.full((6, 3, 100), 1e-3)
    ref = np.concatenate([boxes, quiet], axis=1)
    out = np.concatenate([boxes, 3 * quiet], axis=1)
    reference = Reference([ref], {0: (1, [4, 3])})
    floor = quiet.size * evaluate.PART_SCORE_FLOOR ** 2
    assert fidelity_loss(reference, [out]) == pytest.approx((2e-3) ** 2 * quiet.size / floor, rel=1e-9)
    assert fidelity_loss(reference, [out]) < 0.01
    # the held-out table still gives the plain relative error (the scores tripled: 4)
    assert compare(reference, [out], ["y"])["y[:, 4:7]"]["rel_sq_error"] == pytest.approx(4.0)


def test_onnxprune_eval_reports_each_part(tmp_path):
    from onnxprune.verification.evaluate import evaluate_files

    original, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(yolo_like_model(), original)
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    # a changed class head (convD's weights halved): the box part is untouched, the score part is not
    changed = yolo_like_model()
    wd = next(i for i in changed.graph.initializer if i.name == "wd")
    wd.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(wd) * 0.5, "wd"))
    other = tmp_path / "changed.onnx"
    onnx.save(changed, other)
    outputs = evaluate_files(str(original), str(other), str(data))["outputs"]
    assert list(outputs) == ["y[:, 0:4]", "y[:, 4:7]"]
    x = np.load(data)["x"]
    a, b = run(yolo_like_model(), {"x": x})["y"], run(changed, {"x": x})["y"]
    assert outputs["y[:, 0:4]"]["rel_sq_error"] == 0.0
    want = float(((b[:, 4:] - a[:, 4:]) ** 2).sum() / (a[:, 4:] ** 2).sum())
    assert want > 1e-3
    assert outputs["y[:, 4:7]"]["rel_sq_error"] == pytest.approx(want, rel=1e-4)
    same = evaluate_files(str(original), str(original), str(data))["outputs"]
    assert all(m["rel_sq_error"] == 0.0 for m in same.values())
