"""``scaled_dot_product_attention`` on augmented vectors that carry the decomposed energy.

With ``scale=1`` the fused kernel computes ``qa . ka`` for every pair; choosing::

    qa = [query, 1,     bias_x[q, :],   bias_y[q, :]]
    ka = [key,   c[k],  onehot(kx(k)),  onehot(ky(k))]

gives ``qa . ka = q.k + c[k] + bias_x[q, kx] + bias_y[q, ky]``, exactly the energy, so PyTorch's fused CPU/CUDA
kernels run with no ``[Nq, Nk]`` tensor. The spatial window is folded into ``bias_x``/``bias_y`` as a large finite
negative (``-inf`` would give ``0 * -inf = NaN`` against the zeros of the one-hots): a key outside the window of
either axis gets energy ``<= -BIG + O(energy)``, whose exponential underflows to exactly 0 in the kernel's
floating point (``BIG`` is chosen per dtype; the tests prove equality with ``-inf`` masking).

Widths. The augmented vectors are ``d + 1 + wk + hk`` wide (about 100 at ResNet-50's stage 3), and zero columns
change nothing, so they are padded to what the fused kernels take. The CPU flash kernel needs one width for
queries, keys and values. On CUDA, PyTorch's dispatcher (``sdp_utils.cpp``) takes the flash kernel for float16/
bfloat16 when q, k and v have the same width of at most 256 (sm80 and newer), and the memory-efficient kernel
(any float dtype) when the q/k and v widths are multiples of the GEMM alignment: 8 for float16/bfloat16, 4 for
float32 on sm80 and newer; cuDNN's kernel (preferred on sm90/sm100) wants multiples of 8 and at most 128 (256 with
newer cuDNN) and a ``[N, S, h, D]`` memory layout, which these ``[N, h, S, D]`` tensors do not have. Otherwise
it falls back to the materialising math kernel. So on CUDA the one width is rounded up to a multiple of
``CUDA_WIDTH_MULTIPLE`` = 8: the memory-efficient kernel then takes every dtype and width, and the flash kernel
half precision up to 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from genattn.attention.terms import Terms

# Multiple of the augmented width on CUDA (see the module docstring).
CUDA_WIDTH_MULTIPLE = 8


def mask_value(dtype: torch.dtype) -> float:
    """A finite negative large enough that ``exp`` of it (plus any sane energy) is 0, yet ``4x`` it is finite."""
    return -min(torch.finfo(dtype).max / 8, 1e30)


def _one_hot(index: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    return (index[:, None] == torch.arange(size, device=index.device)).to(dtype)


def width_multiple(device: torch.device) -> int:
    """What the augmented width is rounded up to on ``device`` (see the module docstring)."""
    return CUDA_WIDTH_MULTIPLE if device.type == "cuda" else 1


def augmented(t: Terms, dtype: torch.dtype | None = None, multiple: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """``(qa, ka, va)``, ``[N, h, Nq | Nk, D]``, whose plain attention is the module's.

    ``D`` is the widest of the augmented vectors and the values, rounded up to a multiple of ``multiple``.
    """
    n, h, dev = t.batch, t.heads, t.value.device
    dtype = dtype or t.value.dtype
    q_parts, k_parts = [], []
    if t.query is not None:
        q_parts.append(t.query.to(dtype))
        k_parts.append(t.key.to(dtype))
    if t.key_bias is not None:
        q_parts.append(torch.ones((n, h, t.nq, 1), dtype=dtype, device=dev))
        k_parts.append(t.key_bias.to(dtype).unsqueeze(-1))
    if not q_parts and t.bias_x is None and t.window_x is None:  # '0000': energy 0 everywhere
        q_parts.append(torch.zeros((n, h, t.nq, 1), dtype=dtype, device=dev))
        k_parts.append(torch.zeros((n, h, t.nk, 1), dtype=dtype, device=dev))
    kj = torch.arange(t.nk, device=dev)
    for bias, window, size, key_index, qi in (
            (t.full_bias_x(), t.window_x, t.wk, kj % t.wk, torch.arange(t.nq, device=dev) % t.wq),
            (t.full_bias_y(), t.window_y, t.hk, kj // t.wk, torch.arange(t.nq, device=dev) // t.wq)):
        if bias is None and window is None:
            continue
        if bias is None:
            bias = torch.zeros((n, h, t.nq, size), dtype=dtype, device=dev)
        bias = bias.to(dtype)
        if window is not None:
            allowed = window[qi]  # [Nq, size]: allowed keys of each query along this axis
            bias = bias + torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, mask_value(dtype))
        q_parts.append(bias)
        k_parts.append(_one_hot(key_index, size, dtype).expand(n, h, t.nk, size))
    qa = q_parts[0] if len(q_parts) == 1 else torch.cat(q_parts, dim=-1)
    ka = k_parts[0] if len(k_parts) == 1 else torch.cat(k_parts, dim=-1)
    va = t.value.to(dtype)
    # Fused kernels want one width for all three (and on CUDA a multiple of 8); zeros change nothing.
    width = -(-max(qa.shape[-1], va.shape[-1]) // multiple) * multiple
    if qa.shape[-1] < width:
        qa, ka = F.pad(qa, (0, width - qa.shape[-1])), F.pad(ka, (0, width - ka.shape[-1]))
    if va.shape[-1] < width:
        va = F.pad(va, (0, width - va.shape[-1]))
    # The conv outputs arrive transposed (d not innermost); the fused kernels need unit stride in the last
    # dimension and otherwise fall back to the materialising math kernel.
    return qa.contiguous(), ka.contiguous(), va.contiguous()


def sdpa_attention(t: Terms) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` through ``scaled_dot_product_attention``."""
    dtype = t.value.dtype
    if torch.is_autocast_enabled(t.value.device.type):
        dtype = torch.get_autocast_dtype(t.value.device.type)
    qa, ka, va = augmented(t, dtype, width_multiple(t.value.device))
    out = F.scaled_dot_product_attention(qa, ka, va, scale=1.0)
    return out[..., :t.value.shape[-1]]
