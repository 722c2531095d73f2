"""Shared tiny-model settings for the detector tests (CPU, 64 px images)."""

import pytest
import torch

TINY_BACKBONE = {"layers": (1, 1, 1, 1), "base_width": 16, "stem_width": 16}
TINY_DETECTOR = {"min_size": 64, "max_size": 64, "fpn_channels": 32, "representation_size": 64,
                 "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
                 "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64}



@pytest.fixture
def tiny_model():
    """A tiny plain Faster R-CNN (no attention, no DCN) for 64 px inputs."""
    from genattn.models import get_model

    def make(name="faster_rcnn_r50_fpn_1x_coco", **kw):
        torch.manual_seed(0)
        return get_model(name, backbone=dict(TINY_BACKBONE), **{**TINY_DETECTOR, **kw})

    return make


@pytest.fixture
def tiny_config():
    """The configuration of ``tiny_model()``."""
    from genattn.models import ModelConfig

    heads = {k: v for k, v in TINY_DETECTOR.items() if k not in ("min_size", "max_size")}
    return ModelConfig.from_name("faster_rcnn_r50_fpn_1x_coco").updated(
        {"backbone": TINY_BACKBONE, "heads": heads, "min_size": 64, "max_size": 64})


@pytest.fixture
def tiny_kwargs():
    """get_model keyword arguments for a tiny CPU model."""
    return {"backbone": dict(TINY_BACKBONE), **TINY_DETECTOR}


@pytest.fixture
def batch():
    """Two images of different sizes; one with boxes (COCO ids 1 and 90), one without."""
    return sample_batch()


def sample_batch():
    """Two images of different sizes; one with boxes (COCO ids 1 and 90), one without."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 60, 80, generator=g), torch.rand(3, 50, 40, generator=g)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [10.0, 10.0, 20.0, 50.0]]), "labels": torch.tensor([1, 90])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


@pytest.fixture(scope="session")
def trained_detector():
    """``(model, config)``: the tiny '1111' detector of ``trained_tiny``, trained once per session (10-30 s)."""
    from trained_tiny import trained_tiny

    return trained_tiny()
