"""The original algorithm: materialise the full energy ``[N, h, Nq, Nk]``, softmax, multiply.

Simple and correct for every attention type; it is the benchmark yardstick and the general fallback. Its
memory grows with ``Nq * Nk`` per head (the reason the paper's '1111' models need twice the memory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genattn.attention.terms import Terms


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics are kept in at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def full_energy(t: Terms) -> Tensor:
    """``[N, h, Nq, Nk]`` energy of all query/key pairs, ``-inf`` outside the spatial window.

    Follows the original's sequence of full-size operations so the yardstick costs what the original costs:
    the E3 bias is folded into the content matmul when E1 is on (mmcv multiplies ``(q + u) . k``), and the
    x and y position parts are summed into a full-size temporary before being added.
    """
    n, h = t.batch, t.heads
    if t.query is not None:
        if t.key_bias is not None:  # [q, 1] . [k, u.k] = (q + u) . k
            ones = torch.ones_like(t.query[..., :1])
            energy = torch.matmul(torch.cat((t.query, ones), -1),
                                  torch.cat((t.key, t.key_bias.unsqueeze(-1).to(t.key.dtype)), -1).transpose(-1, -2))
        else:
            energy = torch.matmul(t.query, t.key.transpose(-1, -2))
    else:
        dtype = t.value.dtype
        for extra in (t.key_bias, t.bias_x, t.bias_y):
            if extra is not None:
                dtype = torch.promote_types(dtype, extra.dtype)
        energy = t.value.new_zeros((n, h, t.nq, t.nk), dtype=dtype)
        if t.key_bias is not None:
            energy.view(n, h, t.hq, t.wq, t.hk, t.wk).add_(t.key_bias.view(n, h, 1, 1, t.hk, t.wk))
    if t.bias_x is not None:
        grid = energy.view(n, h, t.hq, t.wq, t.hk, t.wk)
        grid += t.bias_x.unsqueeze(-2) + t.bias_y.unsqueeze(-1)  # a full-size temporary, as in the original
    if t.window_x is not None:
        allowed = (t.window_y[:, None, :, None] & t.window_x[None, :, None, :]).reshape(t.nq, t.nk)
        energy.masked_fill_(~allowed, float("-inf"))
    return energy


def materialize_attention(t: Terms) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` through the full energy."""
    energy = full_energy(t)
    attn = torch.softmax(energy, dim=-1, dtype=stats_dtype(energy.dtype)).to(t.value.dtype)
    return torch.matmul(attn, t.value)
