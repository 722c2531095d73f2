"""Closed forms for the two types whose softmax needs no per-pair work.

* ``'0010'`` (key content only): the energy ``u . k`` does not depend on the query, so every query attends
  alike: one softmax over keys and one context vector per image and head (mmcv takes the same shortcut).
  A spatial window makes the attention per query again, so this path needs ``spatial_range < 0``. '0000'
  (no term, energy 0) is the same with uniform attention: the mean of the values.
* ``'0001'`` (relative position only): the energy ``bx[qx, kx] + by[qy, ky]`` is a sum of an x part and a
  y part, so ``exp`` factorises and ``softmax = softmax_x(bx) (x) softmax_y(by)``; a per-axis window factorises
  the same way. The output is two small matrix products per head, with no ``[Nq, Nk]`` anything.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genattn.attention.paths.materialize import stats_dtype
from genattn.attention.terms import Terms


def key_only_attention(t: Terms) -> Tensor:
    """``[N, h, 1, dv]``: the one context vector of each image and head ('0010' or '0000', no spatial window)."""
    if t.query is not None or t.bias_x is not None or t.window_x is not None:
        raise ValueError("impl='key_only' needs attention_type '0010' or '0000' without spatial_range")
    if t.key_bias is None:  # '0000': softmax of zeros, every key weighs 1 / Nk
        return t.value.mean(dim=-2, keepdim=True)
    attn = torch.softmax(t.key_bias, dim=-1, dtype=stats_dtype(t.key_bias.dtype)).to(t.value.dtype)
    return torch.matmul(attn.unsqueeze(-2), t.value)


def _axis_softmax(bias: Tensor, window: Tensor | None) -> Tensor:
    if window is not None:
        bias = bias.masked_fill(~window, float("-inf"))
    return torch.softmax(bias, dim=-1, dtype=stats_dtype(bias.dtype))


def separable_attention(t: Terms) -> Tensor:
    """``[N, h, Nq, dv]`` for '0001' as an x softmax times a y softmax."""
    if t.query is not None or t.key_bias is not None or t.bias_x is None or t.bias_x.shape[0] != 1:
        raise ValueError("impl='separable' needs attention_type '0001'")
    n, h, dv = t.batch, t.heads, t.value.shape[-1]
    attn_x = _axis_softmax(t.bias_x[0, :, 0], t.window_x)  # [h, wq, wk]
    attn_y = _axis_softmax(t.bias_y[0, :, :, 0], t.window_y)  # [h, hq, hk]
    dtype = torch.promote_types(t.value.dtype, attn_x.dtype)
    if torch.is_autocast_enabled(t.value.device.type):
        dtype = t.value.dtype
    values = t.value.reshape(n, h, t.hk, t.wk * dv).to(dtype)
    # rows first: [h, hq, hk] @ [N, h, hk, wk*dv] -> [N, h, hq, wk, dv]
    rows = torch.matmul(attn_y.to(dtype), values).view(n, h, t.hq, t.wk, dv)
    # then columns: [h, 1, wq, wk] @ [N, h, hq, wk, dv] -> [N, h, hq, wq, dv]
    out = torch.matmul(attn_x.to(dtype).unsqueeze(1), rows)
    return out.reshape(n, h, t.nq, dv).to(t.value.dtype)
