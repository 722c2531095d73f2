"""Suite-wide test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run every test on one intra-op thread. Tests use tiny tensors that gain nothing from threads, and on a
    small shared CPU (2 cores here and in CI) OpenMP's spinning threads made them 5-10x slower; thresholds in the
    training tests were measured with one thread. The setting is restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
