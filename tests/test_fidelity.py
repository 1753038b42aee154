"""The fidelity loss and metrics (onnxprune/verification/evaluate.py) read class scores the way models emit them:
logits as logits, probabilities (a model ending in Softmax, of any rank) as probabilities."""

import numpy as np
import pytest

from onnxprune.verification.evaluate import class_axis, compare, fidelity_loss, warnings_for


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _kl_rows(p, q):
    """Mean over rows of KL(p || q), rows of class probabilities."""
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 5)) * 4, rng.normal(size=(32, 5)) * 4


def test_probability_outputs_give_the_kl_of_those_probabilities(logits):
    a, b = logits
    p, q = _softmax(a, 1), _softmax(b, 1)
    assert class_axis(p) == (1, True)
    assert fidelity_loss([p], [q]) == pytest.approx(_kl_rows(p, q), rel=1e-9)
    # reading the probabilities as logits (softmax over them again) hides most of the damage
    squeezed = _kl_rows(_softmax(p, 1), _softmax(q, 1))
    assert fidelity_loss([p], [q]) > 5 * squeezed


def test_logit_outputs_keep_the_kl_of_their_softmax(logits):
    a, b = logits
    assert class_axis(a) == (1, False)
    assert fidelity_loss([a], [b]) == pytest.approx(_kl_rows(_softmax(a, 1), _softmax(b, 1)), rel=1e-9)


def test_sequence_probabilities_are_compared_per_position():
    # a CTC recogniser's [N, T, K] output, softmax over the last axis
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 7, 6)) * 3, rng.normal(size=(4, 7, 6)) * 3
    p, q = _softmax(a, 2), _softmax(b, 2)
    assert class_axis(p) == (2, True)
    frames_p, frames_q = p.reshape(-1, 6), q.reshape(-1, 6)
    assert fidelity_loss([p], [q]) == pytest.approx(_kl_rows(frames_p, frames_q), rel=1e-9)
    metrics = compare([p], [q], ["y"])["y"]
    assert metrics["top1_agreement"] == pytest.approx(float((frames_p.argmax(1) == frames_q.argmax(1)).mean()))
    assert metrics["kl"] == pytest.approx(_kl_rows(frames_p, frames_q), rel=1e-9)


def test_segmentation_probabilities_are_compared_per_pixel():
    # a segmenter's [N, K, H, W] output, softmax over the channels
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 4, 5)) * 3, rng.normal(size=(2, 3, 4, 5)) * 3
    p, q = _softmax(a, 1), _softmax(b, 1)
    assert class_axis(p) == (1, True)
    pixels_p, pixels_q = np.moveaxis(p, 1, -1).reshape(-1, 3), np.moveaxis(q, 1, -1).reshape(-1, 3)
    assert fidelity_loss([p], [q]) == pytest.approx(_kl_rows(pixels_p, pixels_q), rel=1e-9)


def test_other_outputs_keep_the_relative_squared_error():
    rng = np.random.default_rng(3)
    maps = 1 / (1 + np.exp(-rng.normal(size=(2, 1, 8, 8))))     # a detector's sigmoid map
    boxes = rng.normal(size=(2, 10, 4))                          # 3-D values that are no distribution
    for ref in (maps, boxes):
        out = ref + 0.1
        assert class_axis(ref) is None
        assert fidelity_loss([ref], [out]) == pytest.approx(((out - ref) ** 2).sum() / (ref ** 2).sum())


def test_labels_with_probability_outputs_give_the_cross_entropy(logits):
    a, b = logits
    p, q = _softmax(a, 1), _softmax(b, 1)
    labels = np.arange(len(p)) % 5
    assert fidelity_loss([p], [q], labels) == pytest.approx(-np.log(q[np.arange(len(q)), labels]).mean())
    metrics = compare([p], [q], ["y"], labels)["y"]
    assert metrics["accuracy"] == pytest.approx(float((q.argmax(1) == labels).mean()))


def test_a_pruned_zero_probability_is_a_large_finite_loss():
    p = np.array([[0.5, 0.5]])
    q = np.array([[1.0, 0.0]])
    loss = fidelity_loss([p], [q])
    assert np.isfinite(loss) and loss > 5


def test_collapse_of_a_probability_output_is_warned():
    rng = np.random.default_rng(4)
    p = _softmax(rng.normal(size=(20, 3)) * 3, 1)
    q = np.tile([[0.9, 0.05, 0.05]], (20, 1))
    notes = warnings_for(compare([p], [q], ["y"]))
    assert len(notes) == 1 and "predicts one class" in notes[0]


def test_a_reference_refilled_in_place_is_read_again():
    rng = np.random.default_rng(5)
    p = _softmax(rng.normal(size=(8, 4)) * 3, 1)
    q = _softmax(rng.normal(size=(8, 4)) * 3, 1)
    first = fidelity_loss([p], [q])
    p[:] = q                     # the same array, new contents: the loss must see them
    assert first > 0 and fidelity_loss([p], [q]) == pytest.approx(0.0, abs=1e-12)
    assert fidelity_loss([q], [q]) == pytest.approx(0.0, abs=1e-12)


def test_the_choice_loss_ranks_by_top1_disagreement_then_kl():
    from onnxprune.verification.evaluate import CHECK_LOSS_WEIGHT, choice_loss

    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    hedged = np.array([[0.55, 0.45], [0.51, 0.49], [0.45, 0.55], [0.49, 0.51]])    # every answer kept
    flipped = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])            # one answer flipped
    assert fidelity_loss([p], [hedged]) > fidelity_loss([p], [flipped])             # KL prefers the flip
    assert choice_loss([p], [hedged]) < choice_loss([p], [flipped])                 # the answers do not
    assert choice_loss([p], [flipped]) == pytest.approx(0.25 + CHECK_LOSS_WEIGHT * fidelity_loss([p], [flipped]))
    # per frame for a sequence output; a model without classifier outputs: its fidelity loss
    seq = np.stack([p, p]).transpose(1, 0, 2)                                        # [4, 2, 2]
    assert choice_loss([seq], [np.stack([flipped, p]).transpose(1, 0, 2)]) == pytest.approx(
        0.125 + CHECK_LOSS_WEIGHT * fidelity_loss([seq], [np.stack([flipped, p]).transpose(1, 0, 2)]))
    maps = np.full((1, 1, 4, 4), 0.3)
    assert choice_loss([maps], [maps + 0.1]) == pytest.approx(fidelity_loss([maps], [maps + 0.1]))
