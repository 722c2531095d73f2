"""The sdpa path's augmented vectors have widths CUDA's fused kernels take (checked on shapes, on a CPU).

PyTorch's dispatcher (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp) takes the memory-efficient kernel
when q/k and v widths are multiples of 8 (half precision; 4 for float32 on sm80+), the flash kernel (half
precision) when q, k and v share one width of at most 256, and needs unit stride in the last dimension;
otherwise it materialises the scores (the math kernel).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genattn.attention import GeneralizedAttention
from genattn.attention.paths.sdpa import augmented, width_multiple

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


@pytest.mark.parametrize("channels, size, kv_stride, attention_type, spatial_range, width", [
    (256, (50, 84), 2, "1111", -1, 104),  # the seed's stage 3 at 800x1333: 32 + 1 + 42 + 25 = 100 -> 104
    (512, (25, 42), 2, "1111", -1, 104),  # stage 4: 64 + 1 + 21 + 13 = 99 -> 104
    (256, (50, 84), 2, "1000", -1, 32),  # content only: the head width itself
    (256, (50, 84), 1, "0100", -1, 136),  # kv_stride 1, no q.k: 84 + 50 = 134 -> 136
    (256, (50, 84), 2, "0010", 3, 72),  # key bias and the window's one-hots: 1 + 42 + 25 = 68 -> 72
    (16, (7, 9), 2, "1111", 1, 16),  # 1-wide heads (9 heads): 1 + 1 + 5 + 4 = 11 -> 16
])
def test_widths_suit_cuda_fused_kernels(channels, size, kv_stride, attention_type, spatial_range, width):
    heads = 9 if channels == 16 else 8
    m = GeneralizedAttention(channels, num_heads=heads, kv_stride=kv_stride, attention_type=attention_type,
                             spatial_range=spatial_range)
    with torch.no_grad():
        t = m.decompose(torch.randn(1, channels, *size))
    qa, ka, va = augmented(t, torch.float16, width_multiple(CUDA))
    assert qa.shape[-1] == ka.shape[-1] == va.shape[-1] == width
    assert width % 8 == 0  # memory-efficient kernel: every dtype
    if channels != 16 and kv_stride == 2:
        assert width <= 256  # flash kernel (half precision) at the seed's shapes
    for a in (qa, ka, va):
        assert a.stride(-1) == 1 and a.storage_offset() == 0 and a.dtype == torch.float16
    assert width_multiple(torch.device("cpu")) == 1  # CPU kernels take any width: nothing added there


def test_padding_changes_nothing():
    torch.manual_seed(0)
    m = GeneralizedAttention(16, num_heads=2, spatial_range=1).double()
    with torch.no_grad():
        t = m.decompose(torch.randn(2, 16, 5, 7, dtype=torch.float64))
    plain = augmented(t)
    padded = augmented(t, multiple=8)
    assert plain[0].shape[-1] == 8 + 1 + 4 + 3 and padded[0].shape[-1] == 16
    dv = t.value.shape[-1]
    torch.testing.assert_close(F.scaled_dot_product_attention(*padded, scale=1.0)[..., :dv],
                               F.scaled_dot_product_attention(*plain, scale=1.0)[..., :dv], rtol=1e-12, atol=1e-12)
