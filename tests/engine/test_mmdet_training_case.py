"""genattn's training numbers against MMDetection 2.28.2's on the small case of ``mmdet_training_case.py``.

``mmdet_training_case.json`` holds what MMDetection computed (written by ``tools/mmdet_train_parity.py
--fixture`` in an MMDetection venv); this test needs no MMDetection. float64 on both sides: the counts must be
equal; losses and gradient norms agree to 1e-7 relative, not to float64 noise, because MMDetection computes its
RPN classification loss (``label.float()``) and its box regression targets (``bbox2delta``) in float32 even in a
float64 model. A change of one sampled anchor or RoI, or of a normalisation, moves them by 1e-4 or more.
"""

import json
from pathlib import Path

import pytest

from mmdet_training_case import build_model, measure

FIXTURE = Path(__file__).with_name("mmdet_training_case.json")


@pytest.fixture(scope="module")
def numbers():
    return json.loads(FIXTURE.read_text())["mmdet"], measure(build_model())


@pytest.mark.slow
@pytest.mark.parametrize("key", ["rpn_assigned", "rpn_sampled", "roi_assigned", "roi_sampled", "real_samplers"])
def test_assignment_and_sampling_counts_equal_mmdetections(numbers, key):
    ref, ours = numbers
    assert ours[key] == ref[key]


@pytest.mark.slow
def test_losses_and_gradients_equal_mmdetections(numbers):
    ref, ours = numbers
    assert ours["losses"].keys() == ref["losses"].keys()
    for key, value in ref["losses"].items():
        assert ours["losses"][key] == pytest.approx(value, rel=1e-6), key
    for key, value in ref["grad_norms"].items():
        assert ours["grad_norms"][key] == pytest.approx(value, rel=1e-6), key
