"""Fixtures of the engine tests; the helpers live in tiny_setup.py."""

import pytest

from tiny_setup import make_coco



@pytest.fixture
def tiny_coco(tmp_path):
    """A data root with train2017 (6 images) and val2017 (= the same images, for overfitting checks)."""
    root = tmp_path / "data"
    make_coco(root, "train2017", 6)
    make_coco(root, "val2017", 6)
    return root
