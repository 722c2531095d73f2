"""'auto' off the CPU: a path that fails or gives wrong values is dropped with one warning and remembered; the
environment variable and ``impl`` force a path. The guard only runs off the CPU, so these tests hand it a
chain of paths and a stand-in for the untried one."""

from __future__ import annotations

import warnings

import pytest
import torch
from attention_oracle import oracle_forward

from genattn.attention import GeneralizedAttention, paths
from genattn.attention.paths import guard

CHAIN = ["flex", "sdpa", "chunked"]


@pytest.fixture(autouse=True)
def _fresh_guard():
    guard.reset()
    yield
    guard.reset()


def _module(attention_type="1111", **kwargs):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type, **kwargs).double()
    with torch.no_grad():
        m.gamma.fill_(0.7)
    return m


class _BadBackward(torch.autograd.Function):
    """Identity forward; its backward raises (``scale=None``) or scales the gradient."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.scale is None:
            raise RuntimeError("triton: out of resource: shared memory")
        return grad * ctx.scale, None


class Stand:
    """``run`` for the guard: 'flex' misbehaves as told, every call is counted."""

    def __init__(self, mode: str):
        self.mode, self.calls = mode, []

    def __call__(self, name, t):
        self.calls.append(name)
        if name != "flex":
            return paths.run(name, t)
        if self.mode == "raise":
            raise RuntimeError("Cannot find a working triton installation\nmore lines")
        if self.mode == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        out = paths.run("sdpa", t)
        if self.mode == "wrong":
            return out * 1.5
        if self.mode == "nan":
            return out * float("nan")
        return _BadBackward.apply(out, {"bad_backward": None, "wrong_grad": 2.0, "good": 1.0}[self.mode])


def _attn(m, x, run=None):
    """The attention core's output [N, h, Nq, d] of ``x``: guarded with ``run``, or the materialising oracle."""
    t = m.decompose(x)
    return paths.run("materialize", t) if run is None else guard.run_guarded(CHAIN, t, run)


@pytest.mark.parametrize("mode", ["raise", "wrong", "nan"])
def test_forward_failure_falls_back_once_and_is_remembered(mode):
    m = _module()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    run = Stand(mode)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="path 'flex'.*using 'sdpa'") as record:
        out = _attn(m, x, run)
    assert len([w for w in record if "path 'flex'" in str(w.message)]) == 1
    with torch.no_grad():
        torch.testing.assert_close(out, _attn(m, x), rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # the configuration of an inference call
        assert "flex" in guard.dropped(m.decompose(x))
    assert [k for k in guard.fallbacks()] == ["flex for cpu float64, q.k+key bias+position, head width 8, inference"]
    run.calls.clear()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        _attn(m, x, run)
    assert "flex" not in run.calls  # remembered: not tried again for this configuration


def test_out_of_memory_is_raised_not_taken_for_a_broken_path():
    m = _module()
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(torch.cuda.OutOfMemoryError):
        _attn(m, x, Stand("oom"))
    assert not guard.fallbacks()


@pytest.mark.parametrize("mode", ["bad_backward", "wrong_grad"])
def test_backward_failure_falls_back(mode):
    m = _module()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = _attn(m, x)
    grad_out = torch.randn_like(ref)
    ref_grad, = torch.autograd.grad(ref, x, grad_out)
    out = _attn(m, x, Stand(mode))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    with pytest.warns(RuntimeWarning, match="path 'flex' (failed in the backward pass|gradient differs)"):
        grad, = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)
    assert "flex" in guard.dropped(m.decompose(x))


def test_a_good_path_is_verified_once_per_size():
    m = _module()
    run = Stand("good")
    for size, expected_reference_calls in (((5, 6), 1), ((5, 6), 0), ((4, 7), 1)):
        x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=True)
        run.calls.clear()
        _attn(m, x, run).sum().backward()
        # forward and backward each compare once with the reference (chunked) at a new size
        assert run.calls.count("chunked") == 2 * expected_reference_calls, size
        assert run.calls.count("flex") == 1
    assert not guard.fallbacks()


def test_module_auto_falls_back_through_attend(monkeypatch):
    """The module's own forward, as on a GPU where flex fails: the output and gradients are still exact."""
    monkeypatch.setattr(paths, "candidates", lambda *args: list(CHAIN))
    monkeypatch.setitem(paths._RUN, "flex", lambda t: Stand("raise")("flex", t))
    m = _module(spatial_range=1)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = oracle_forward(m, x)
    ref_grad, = torch.autograd.grad(ref.sum(), x)
    with pytest.warns(RuntimeWarning, match="path 'flex' failed: RuntimeError: Cannot find a working triton"):
        out = m(x)
    grad, = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)
    assert paths.choose("auto", "1111", 1, m.decompose(x)) == "sdpa"


def test_a_forced_path_is_not_guarded(monkeypatch):
    monkeypatch.setattr(paths, "candidates", lambda *args: list(CHAIN))
    monkeypatch.setitem(paths._RUN, "flex", lambda t: Stand("raise")("flex", t))
    m = _module(impl="flex")
    with pytest.raises(RuntimeError, match="triton"):
        m(torch.randn(1, 16, 4, 5, dtype=torch.float64))


def test_environment_variable_forces_a_path(monkeypatch):
    used = []
    for name in ("chunked", "sdpa"):
        real = paths._RUN[name]
        monkeypatch.setitem(paths._RUN, name, lambda t, real=real, name=name: used.append(name) or real(t))
    m = _module()
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64)
    monkeypatch.setenv(paths.ENV_VAR, "chunked")
    m(x)
    assert used == ["chunked"] and paths.choose("auto", "1111", -1, m.decompose(x)) == "chunked"
    m.impl = "sdpa"  # a module's own impl wins over the environment
    m(x)
    assert used == ["chunked", "sdpa"]
    m.impl = "auto"
    monkeypatch.setenv(paths.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"^environment variable GENATTN_ATTENTION_IMPL='fast': impl must be"):
        m(x)
    monkeypatch.setenv(paths.ENV_VAR, "key_only")
    with pytest.raises(ValueError, match=r"GENATTN_ATTENTION_IMPL='key_only': impl='key_only' needs"):
        m(x)


def test_candidates_off_the_cpu_end_with_sdpa_and_chunked(monkeypatch):
    def terms(device, **kw):  # shapes only ('meta' stands for a device CI does not have)
        return guard.Terms(value=torch.empty(2, 2, 30, 8, device=device), hq=5, wq=6, hk=5, wk=6, **kw)

    assert paths.candidates("1111", -1, terms("cpu")) == ["sdpa"]  # CPU: one path, no guard
    assert paths.candidates("1111", -1, terms("meta")) == ["sdpa", "chunked"]  # no Triton there: sdpa first
    assert paths.candidates("0010", -1, terms("meta")) == ["key_only", "sdpa", "chunked"]
    assert paths.candidates("0001", -1, terms("meta")) == ["separable", "sdpa", "chunked"]
    monkeypatch.setattr(paths, "flex_available", lambda device: True)
    assert paths.candidates("1111", -1, terms("meta")) == ["flex", "sdpa", "chunked"]
