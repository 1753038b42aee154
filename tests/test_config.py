"""`PruneConfig`: every bad option fails before any file is read, with the same message from the
API and the CLI; a config round-trips through JSON, so a report's options repeat its run."""

import json
import os
import time

import pytest
from click.testing import CliRunner

import onnxprune
import onnxprune.pipeline  # noqa: F401  (imported up front: the timing below is of the checks)
from onnxprune import criteria  # noqa: F401
from onnxprune.cli import main
from onnxprune.config import PRESETS, PruneConfig

HERE = os.path.dirname(os.path.abspath(__file__))
MISSING = os.path.join(HERE, "no_such_model.onnx")   # never read: the options fail first

BAD = [
    # the CLI refuses an unknown choice at parse time (a usage error, exit 2: tests/test_cli_usability.py)
    ({"criterion": "l3", "calib": "random"}, None, "unknown criterion 'l3'"),
    ({"calib": "random", "variety": "clusters"}, None, "unknown --variety 'clusters'"),
    ({"preset": "quick"}, None, "unknown preset 'quick'"),
    ({"ratio": 1.0}, ["--ratio", "1"], "ratio must be in [0, 1), got 1.0"),
    ({"target_macs": 1.5}, ["--target-macs", "1.5"], "--target-macs must be in (0, 1), got 1.5"),
    ({"allocate": "sensitivity"}, ["--allocate", "sensitivity"], "--allocate sensitivity needs calibration data"),
    ({"allocate": "utilization"}, ["--allocate", "utilization"], "--allocate utilization needs calibration data"),
    ({"min_fidelity": 2.0}, None, "--min-fidelity must be in [0, 1], got 2.0"),
    ({"target_latency": 0.5, "target_macs": 0.5}, None, "give --target-latency or --target-macs, not both"),
    ({"ratio": 0.9, "target_macs": 0.2}, ["--ratio", "0.9", "--target-macs", "0.2"],
     "give --ratio or --target-macs, not both (--target-macs decides how much is removed)"),
]


@pytest.mark.parametrize("kw,flags,message", BAD)
def test_bad_options_fail_before_the_model_is_read(kw, flags, message):
    start = time.perf_counter()
    with pytest.raises(onnxprune.OnnxPruneError) as err:
        onnxprune.prune(MISSING, **kw)
    assert message in str(err.value)
    assert time.perf_counter() - start < 5.0      # no model read, no data loaded (a calibration pass takes longer)
    if flags is not None:
        result = CliRunner().invoke(main, [MISSING, *flags])
        assert result.exit_code == 2 and result.output.strip() == f"error: {err.value}"   # usage errors


def test_a_plan_makes_the_selection_options_moot():
    # a saved plan decides what is removed: the criterion is not checked (the model and plan files are)
    with pytest.raises(onnxprune.OnnxPruneError, match="not found|No such file|cannot read"):
        onnxprune.prune(MISSING, criterion="l3", plan="plan.json")


def test_keywords_round_trip_through_json():
    config = PruneConfig.from_keywords(criterion="l1", ratio=0.3, ignore=("conv1*",), mean=(0.5, 0.4), calib="random",
                                       input_shape={"x": [1, 3, 8, 8]}, finetune=True, augment=("shift", "flip"))
    again = PruneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.selection.ignore == ("conv1*",) and again.calibration.mean == (0.5, 0.4)
    assert PruneConfig.from_keywords() == PruneConfig()


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="ratios"):
        PruneConfig.from_keywords(ratios=0.3)


def test_presets_are_one_table():
    assert set(PRESETS) == {"fast", "default", "thorough"}
    fast = PruneConfig.from_keywords(preset="fast").resolved().selection
    assert (fast.allocate, fast.variety, fast.order_check) == ("uniform", "off", False)
    given = PruneConfig.from_keywords(preset="fast", allocate="global", order_check=True).resolved().selection
    assert (given.allocate, given.order_check) == ("global", True)
    assert PruneConfig().resolved().selection.order_check is True


def test_report_options_repeat_the_run():
    model = os.path.join(HERE, "models", "vgg_style.onnx")
    first = onnxprune.prune(model, criterion="l1", ratio=0.4, verify=False)
    config = PruneConfig.from_dict(json.loads(json.dumps(first.report["options"])))
    again = onnxprune.prune(model, config=config)
    # the resolved round_to is given on the repeat, so only where it came from differs
    assert again.report["options"]["round_to_source"] == "given"
    assert {**again.report["options"], "round_to_source": "default"} == first.report["options"]
    assert again.model.SerializeToString() == first.model.SerializeToString()
