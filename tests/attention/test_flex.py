"""The flex path off CUDA: FlexAttention's compiled CPU kernel, and its score_mod/mask_mod on the dense grid.

The float64 oracle tests (test_attention_exact, test_mmcv_parity) run flex with gradients for every type,
window, stride and head width, i.e. the dense evaluation of the score_mod/mask_mod that CUDA's kernel runs.
Here the compiled kernel runs them too (inference), in one configuration that uses every line of them.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from attention_oracle import oracle_forward

from genattn.attention import GeneralizedAttention
from genattn.attention.paths import flex

COMPILER = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                              reason="inductor's CPU backend needs a C++ compiler")


def _module(attention_type, heads=2, **kwargs):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, num_heads=heads, attention_type=attention_type, **kwargs)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    return m


@COMPILER
@pytest.mark.slow
def test_compiled_cpu_kernel_matches_the_oracle():
    """Every line of the score_mod (q.k, key bias, x and y position) and the mask_mod (window), 1-wide heads
    (16 channels, mmcv's 9 heads) padded to the kernel's width, a non-square map, kv_stride 2. One compilation
    (some 10-60 s of CPU): the other configurations' score_mod/mask_mod logic is checked by the oracle tests
    through the dense evaluation, which this test shows equal to the kernel."""
    m = _module("1111", heads=9, spatial_range=1, kv_stride=2)
    x = torch.randn(2, 16, 7, 9)
    ref = oracle_forward(m.double(), x.double())
    m.float().impl = "flex"
    with torch.no_grad():
        t = m.decompose(x)
        compiled = flex.flex_attention_path(t)
        out = m(x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    q, k, v = _padded(t)
    score_mod, mask_mod = flex._mods(t)
    dense = flex._dense(q, k, v, score_mod, mask_mod)[..., :t.value.shape[-1]]
    torch.testing.assert_close(dense, compiled, rtol=1e-5, atol=1e-6)


def _padded(t):
    import torch.nn.functional as F

    n, h, dim = t.batch, t.heads, flex.FLEX_MIN_DIM
    if t.query is None:
        q, k = t.value.new_zeros((n, h, t.nq, dim)), t.value.new_zeros((n, h, t.nk, dim))
    else:
        q, k = (F.pad(a, (0, max(0, dim - a.shape[-1]))) for a in (t.query, t.key))
    return q, k, F.pad(t.value, (0, max(0, dim - t.value.shape[-1])))


def test_dense_evaluation_has_gradients_and_empty_batches():
    m = _module("1111", spatial_range=1).double()
    m.impl = "flex"
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a: m(a), (x,))
    empty = torch.zeros(0, 16, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert m(empty).shape == empty.shape
