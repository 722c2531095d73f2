"""Fixtures of the engine tests; the helpers live in tiny_setup.py."""

import pytest
import torch

from tiny_setup import make_coco


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU more threads spin against each other (10x slower here), and
    the thresholds below were measured with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_coco(tmp_path):
    """A data root with train2017 (6 images) and val2017 (= the same images, for overfitting checks)."""
    root = tmp_path / "data"
    make_coco(root, "train2017", 6)
    make_coco(root, "val2017", 6)
    return root
