"""CUDA only (skipped without a GPU; tools/gpu_check.py runs them): what the CPU tests cannot show.

* flex compiles once with dynamic shapes and must stay exact as the map size changes (torch 2.14's CPU kernel
  did not: see paths/flex.py);
* the sdpa path's padded vectors are taken by the fused kernels, never the materialising math kernel;
* on a working GPU 'auto' keeps its first choice: nothing is dropped by the guard.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from genattn.attention import GeneralizedAttention
from genattn.attention.paths import guard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _pair(attention_type, channels=64, heads=4, **kwargs):
    torch.manual_seed(0)
    m = GeneralizedAttention(channels, num_heads=heads, attention_type=attention_type, **kwargs)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    return copy.deepcopy(m).double(), m.cuda()


@pytest.mark.parametrize("attention_type, spatial_range", [("1111", -1), ("0110", 2)])
def test_cuda_flex_stays_exact_across_map_sizes(attention_type, spatial_range):
    ref_m, m = _pair(attention_type, spatial_range=spatial_range)
    m.impl = "flex"
    for size in ((12, 10), (9, 14), (16, 16), (7, 23)):
        x = torch.randn(2, 64, *size, dtype=torch.float64)
        xr = x.clone().requires_grad_()
        ref = ref_m(xr)
        ref_grad, = torch.autograd.grad(ref.sum(), xr)
        xc = x.float().cuda().requires_grad_()
        out = m(xc)
        grad, = torch.autograd.grad(out.sum(), xc)
        torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-3, atol=1e-3, msg=lambda s: f"{size}: {s}")
        torch.testing.assert_close(grad.double().cpu(), ref_grad, rtol=1e-3, atol=1e-3, msg=lambda s: f"{size}: {s}")
        with torch.no_grad():
            torch.testing.assert_close(m(xc).double().cpu(), ref.detach(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype, backend", [
    (torch.float32, "EFFICIENT_ATTENTION"), (torch.float16, "EFFICIENT_ATTENTION"),
    (torch.bfloat16, "FLASH_ATTENTION"),
])
def test_cuda_sdpa_runs_a_fused_kernel(dtype, backend):
    """Stage-4 width (64 + 1 + 21 + 13 = 99, padded to 104): the chosen fused kernel must take it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    m = GeneralizedAttention(512, num_heads=8, impl="sdpa").cuda()
    x = torch.randn(1, 512, 25, 42, device="cuda", requires_grad=True)
    amp = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with amp, sdpa_kernel(getattr(SDPBackend, backend)):  # raises if that kernel cannot take the inputs
        m(x).float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cuda_auto_keeps_its_first_choice():
    guard.reset()
    for attention_type, spatial_range in (("1111", -1), ("1000", -1), ("0110", 1), ("0010", -1), ("0001", -1)):
        _, m = _pair(attention_type, spatial_range=spatial_range)
        x = torch.randn(2, 64, 11, 13, device="cuda", requires_grad=True)
        m(x).sum().backward()
        with torch.no_grad():
            m(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m(x).float().sum().backward()
    assert guard.fallbacks() == {}
