"""The custom backward (gradcheck), reduced precision under autocast, and the CUDA-only paths."""

from __future__ import annotations

import pytest
import torch

from genattn.attention import GeneralizedAttention
from genattn.attention.paths import applicable
from genattn.attention.paths.chunked import chunked_attention
from genattn.attention.terms import Terms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _terms(e1: bool, e3: bool, pos: bool, window: bool, hq=3, wq=2, hk=2, wk=3, n=2, h=2, d=3):
    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    tensors = {"value": leaf(n, h, hk * wk, d)}
    if e1:
        tensors.update(query=leaf(n, h, hq * wq, d), key=leaf(n, h, hk * wk, d))
    if e3:
        tensors["key_bias"] = leaf(n, h, hk * wk)
    if pos:
        tensors.update(bias_x=leaf(n, h, hq, wq, wk), bias_y=leaf(n, h, hq, wq, hk))
    windows = {}
    if window:
        windows = dict(window_x=torch.tensor([[True, True, False], [False, True, True]]),
                       window_y=torch.tensor([[True, False], [True, True], [False, True]]))
    return tensors, dict(hq=hq, wq=wq, hk=hk, wk=wk, **windows)


@pytest.mark.parametrize("e1, e3, pos, window", [
    (True, True, True, True), (True, False, False, False), (False, True, False, False),
    (False, False, True, True), (True, False, True, False),
])
@pytest.mark.parametrize("queries", [4, None])
def test_gradcheck_chunked(e1, e3, pos, window, queries):
    torch.manual_seed(0)
    tensors, static = _terms(e1, e3, pos, window)
    names = list(tensors)
    nk = static["hk"] * static["wk"]
    # 4 queries of one (image, head) pair a block, or every pair and query in one block
    elements = 4 * nk if queries else 1 << 20

    def fn(*args):
        return chunked_attention(Terms(**dict(zip(names, args)), **static), elements=elements)

    assert torch.autograd.gradcheck(fn, tuple(tensors.values()))


# bf16 keeps ~3 significant digits: the attention branch agrees with float32 within 3% of its largest magnitude,
# input gradients within 2% of theirs (measured: <= 1.5% and <= 0.8% on these shapes).
BRANCH_TOL, GRAD_TOL = 0.03, 0.02


@pytest.mark.parametrize("attention_type, spatial_range", [("1111", -1), ("1111", 1), ("0010", -1), ("0001", 2),
                                                           ("0100", -1)])
def test_autocast_bfloat16_cpu(attention_type, spatial_range):
    torch.manual_seed(0)
    m = GeneralizedAttention(32, num_heads=4, attention_type=attention_type, spatial_range=spatial_range)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(2, 32, 8, 10, requires_grad=True)
    for impl in ["auto", *applicable(attention_type, spatial_range)]:
        m.impl = impl
        ref = m(x)
        ref_grad, = torch.autograd.grad(ref.sum(), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        grad, = torch.autograd.grad(out.float().sum(), x)
        branch = (ref - x).abs().max()
        assert (out.float() - ref).abs().max() <= BRANCH_TOL * branch, impl
        assert (grad - ref_grad).abs().max() <= GRAD_TOL * ref_grad.abs().max(), impl


@CUDA
@pytest.mark.parametrize("attention_type, spatial_range, channels, heads", [
    ("1111", -1, 64, 4), ("1111", 1, 64, 4), ("0110", 1, 64, 4), ("0010", -1, 64, 4),
    ("1111", 1, 16, 9),  # mmcv's default heads: 1-channel heads, which flex pads to its minimum width
])
def test_cuda_paths_match_float64_cpu(attention_type, spatial_range, channels, heads):
    torch.manual_seed(0)
    m = GeneralizedAttention(channels, num_heads=heads, attention_type=attention_type, spatial_range=spatial_range)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(2, channels, 12, 10)
    ref_m = m.double()
    ref = ref_m(x.double())
    m = m.float().cuda()
    for impl in applicable(attention_type, spatial_range, "cuda"):
        m.impl = impl
        xc = x.cuda().requires_grad_()
        out = m(xc)
        out.sum().backward()
        torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-3, atol=1e-3, msg=lambda s: f"{impl}: {s}")
        assert torch.isfinite(xc.grad).all()


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    torch.manual_seed(0)
    m = GeneralizedAttention(64, num_heads=4, spatial_range=2).cuda()
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(2, 64, 12, 10, device="cuda", requires_grad=True)
    for impl in ["auto", *applicable("1111", 2, "cuda")]:
        m.impl = impl
        ref = m(x)
        with torch.autocast("cuda", dtype=dtype):
            out = m(x)
        out.float().sum().backward()
        assert (out.float() - ref).abs().max() <= BRANCH_TOL * (ref - x).abs().max(), impl
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("attention_type, spatial_range", [("1000", -1), ("0010", -1), ("1111", 1), ("0101", -1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_runs_the_fused_cpu_kernel(attention_type, spatial_range, dtype):
    """The augmented vectors satisfy the flash kernel's conditions, so sdpa never falls back to materialising."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type, spatial_range=spatial_range,
                             impl="sdpa").to(dtype)
    x = torch.randn(2, 16, 5, 6, dtype=dtype, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot take the inputs
        m(x).sum().backward()
