"""Relative position features and spatial windows, per axis.

The position terms of generalized attention depend on the query/key pair only through the x offset and the
y offset, and enter the energy as a sum of an x part and a y part. Everything here is therefore computed per
axis ([queries along the axis, keys along the axis]) and never for all pairs of pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

WAVE_LENGTH = 1000.0


def sinusoidal_embedding(offsets: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (scaled) pixel offsets, as in the paper and mmcv.

    Args:
        offsets: any shape ``S``, float.
        dim: the position embedding dimension ``D`` (divisible by 4); ``D/4`` frequencies
            ``1000^(-4i/D)``, ``i = 0..D/4-1``.

    Returns:
        ``[*S, D/2]``: the sines of all frequencies, then the cosines.
    """
    freq_idx = torch.arange(dim // 4, device=offsets.device, dtype=offsets.dtype)
    # mmcv divides by 1000^(4i/D) rather than multiplying by its inverse; keep the division so float32 results
    # round the same way.
    wavelengths = WAVE_LENGTH ** ((4.0 / dim) * freq_idx)
    phase = offsets.unsqueeze(-1) / wavelengths
    return torch.cat((phase.sin(), phase.cos()), dim=-1)


def axis_offsets(n_q: int, n_k: int, q_stride: int, kv_stride: int, magnitude: float, *,
                 device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[n_q, n_k]`` offsets ``(i * q_stride - j * kv_stride) * magnitude`` in input-map pixels."""
    qi = torch.arange(n_q, device=device, dtype=dtype) * q_stride
    kj = torch.arange(n_k, device=device, dtype=dtype) * kv_stride
    return (qi[:, None] - kj[None, :]) * magnitude


def relative_features(fc: torch.nn.Linear, n_q: int, n_k: int, num_heads: int, q_stride: int, kv_stride: int,
                      magnitude: float, embed_dim: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Projected relative position features along one axis, ``fc(emb(offset)) / sqrt(2)``.

    Args:
        fc: ``appr_geom_fc_x`` or ``appr_geom_fc_y`` (``Linear(D/2, heads*d)``).

    Returns:
        ``[heads, n_q, n_k, d]``; output channel ``c`` of ``fc`` belongs to head ``c // d``.
    """
    emb = sinusoidal_embedding(
        axis_offsets(n_q, n_k, q_stride, kv_stride, magnitude, device=device, dtype=dtype), embed_dim)
    feat = fc(emb)
    feat = feat.view(n_q, n_k, num_heads, -1).permute(2, 0, 1, 3)  # [heads, n_q, n_k, d]
    # Dividing (rather than multiplying by 1/sqrt(2)) matches mmcv's rounding.
    return feat / math.sqrt(2)


def axis_window(n_q: int, n_k: int, q_stride: int, kv_stride: int, spatial_range: int, *,
                device: torch.device) -> Tensor:
    """Keys allowed for each query along one axis when ``spatial_range >= 0``.

    Key index ``j`` is allowed for the query at input pixel ``p = i * q_stride`` iff
    ``max((p - r) // kv_stride, 0) <= j <= (p + r + 1) // kv_stride`` (floor division), mmcv's window. It is
    never empty.

    Returns:
        bool ``[n_q, n_k]``, True where allowed.
    """
    p = torch.arange(n_q, device=device) * q_stride
    lo = torch.div(p - spatial_range, kv_stride, rounding_mode="floor").clamp(min=0)
    hi = torch.div(p + spatial_range + 1, kv_stride, rounding_mode="floor")
    j = torch.arange(n_k, device=device)
    return (j[None, :] >= lo[:, None]) & (j[None, :] <= hi[:, None])
