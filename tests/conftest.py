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


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` as the ``--compile`` options call it, with dynamo's ``eager`` backend (the graphs are
    traced, guarded and run, but no code is generated: seconds instead of minutes). Yields the number of graphs
    compiled so far, as a one-element list."""
    real = torch.compile
    graphs = [0]

    def backend(gm, example_inputs):
        graphs[0] += 1
        return gm.forward

    def compile(model, **kwargs):
        return real(model, backend=backend, **kwargs)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile)
    yield graphs
    torch._dynamo.reset()
