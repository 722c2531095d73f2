"""A float64 oracle of generalized attention written straight from the paper's formula.

Deliberately naive: explicit per-pair offsets and position features ``r(q, k)`` of shape ``[Nq, Nk, h, d]``,
the full energy, and the spatial window written with Python integers. Only for tiny test shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _embed(offset: torch.Tensor, dim: int) -> torch.Tensor:
    """sin(offset / 1000^(4i/D)) for i < D/4, then the cosines."""
    sines, cosines = [], []
    for i in range(dim // 4):
        wavelength = 1000.0 ** (4.0 * i / dim)
        sines.append(torch.sin(offset / wavelength))
        cosines.append(torch.cos(offset / wavelength))
    return torch.stack(sines + cosines, dim=-1)


def _window(n_q: int, n_k: int, q_stride: int, kv_stride: int, r: int) -> torch.Tensor:
    allowed = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        p = i * q_stride
        lo = max(math.floor((p - r) / kv_stride), 0)
        hi = math.floor((p + r + 1) / kv_stride)
        for j in range(n_k):
            allowed[i, j] = lo <= j <= hi
    return allowed


def oracle_energy(m, x: torch.Tensor, terms: str | None = None) -> torch.Tensor:
    """``[N, h, Nq, Nk]`` energy of module ``m`` on ``x`` (only the terms in ``terms``, default all enabled)."""
    terms = terms or m.attention_type
    n, c, height, width = x.shape
    h, d = m.num_heads, m.qk_embed_dim
    qs, ks = m.q_stride, m.kv_stride
    x_q, x_kv = x[:, :, ::qs, ::qs], x[:, :, ::ks, ::ks]
    hq, wq = x_q.shape[-2:]
    hk, wk = x_kv.shape[-2:]

    def project(conv, inp):  # -> [N, h, pixels, d]
        out = torch.einsum("oc,ncyx->nyxo", conv.weight[:, :, 0, 0], inp)
        return out.reshape(n, -1, h, d).transpose(1, 2)

    q_pos = [(y * qs, xx * qs) for y in range(hq) for xx in range(wq)]
    k_pos = [(y * ks, xx * ks) for y in range(hk) for xx in range(wk)]
    energy = x.new_zeros(n, h, hq * wq, hk * wk)
    if terms[1] == "1" or terms[3] == "1":
        dy = torch.tensor([[(qp[0] - kp[0]) * m.position_magnitude for kp in k_pos] for qp in q_pos], dtype=x.dtype)
        dx = torch.tensor([[(qp[1] - kp[1]) * m.position_magnitude for kp in k_pos] for qp in q_pos], dtype=x.dtype)
        big_d = m.position_embedding_dim
        r = (_embed(dx, big_d) @ m.appr_geom_fc_x.weight.T + _embed(dy, big_d) @ m.appr_geom_fc_y.weight.T)
        r = r.view(hq * wq, hk * wk, h, d) / math.sqrt(2)  # the pairwise position features
    if terms[0] == "1":
        energy = energy + project(m.query_conv, x_q) @ project(m.key_conv, x_kv).transpose(-1, -2)
    if terms[1] == "1":
        energy = energy + torch.einsum("nhid,ijhd->nhij", project(m.query_conv, x_q), r)
    if terms[2] == "1":
        u = m.appr_bias.view(h, d)
        energy = energy + torch.einsum("hd,nhjd->nhj", u, project(m.key_conv, x_kv))[:, :, None, :]
    if terms[3] == "1":
        v = m.geom_bias.view(h, d)
        energy = energy + torch.einsum("hd,ijhd->hij", v, r)[None]
    if m.spatial_range >= 0:
        wy = _window(hq, hk, qs, ks, m.spatial_range)
        wx = _window(wq, wk, qs, ks, m.spatial_range)
        allowed = torch.tensor([[bool(wy[i // wq, j // wk]) and bool(wx[i % wq, j % wk])
                                 for j in range(hk * wk)] for i in range(hq * wq)])
        energy = energy.masked_fill(~allowed, float("-inf"))
    return energy


def oracle_forward(m, x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` output of module ``m`` on ``x`` computed from the formula."""
    n, c, height, width = x.shape
    h, d = m.num_heads, m.qk_embed_dim
    x_q, x_kv = x[:, :, ::m.q_stride, ::m.q_stride], x[:, :, ::m.kv_stride, ::m.kv_stride]
    hq, wq = x_q.shape[-2:]
    attn = torch.softmax(oracle_energy(m, x), dim=-1)
    values = torch.einsum("oc,ncyx->nyxo", m.value_conv.weight[:, :, 0, 0], x_kv).reshape(n, -1, h, d)
    out = torch.einsum("nhij,njhd->nihd", attn, values).reshape(n, hq, wq, h * d)
    out = torch.einsum("co,nyxo->ncyx", m.proj_conv.weight[:, :, 0, 0], out) + m.proj_conv.bias[:, None, None]
    if (hq, wq) != (height, width):
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
    return m.gamma * out + x
