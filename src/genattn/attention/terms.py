"""The decomposed energy that every computation path consumes.

For one head, with query pixel ``q = (qy, qx)`` and key pixel ``k = (ky, kx)``::

    energy(q, k) = [E1] query[q] . key[k]  +  [E3] key_bias[k]  +  bias_x[q, kx]  +  bias_y[q, ky]

where ``key_bias = u . key`` (E3), ``bias_x[q, kx] = ([E2] query[q] + [E4] v) . Rx[qx, kx]`` and ``bias_y``
likewise with ``Ry[qy, ky]``. ``bias_x``/``bias_y`` are small ([queries, keys along one axis]); no path ever
forms the pairwise position tensor ``[queries, keys, d]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Terms:
    """Inputs of the attention core for one forward call.

    Attributes:
        value: ``[N, h, Nk, dv]`` values, ``Nk = hk * wk`` in row-major (y, x) order.
        query: ``[N, h, Nq, d]`` queries for E1 (None when E1 is off), ``Nq = hq * wq``.
        key: ``[N, h, Nk, d]`` keys for E1 (None when E1 is off).
        key_bias: ``[N, h, Nk]`` the E3 energy ``u . key`` (None when E3 is off).
        bias_x: ``[N | 1, h, hq | 1, wq, wk]`` x part of E2 + E4 (None when both are off); broadcastable.
        bias_y: ``[N | 1, h, hq, wq | 1, hk]`` y part of E2 + E4 (None when both are off); broadcastable.
        window_x: bool ``[wq, wk]`` allowed keys per query column (None: no spatial_range).
        window_y: bool ``[hq, hk]`` allowed keys per query row (None: no spatial_range).
    """

    value: Tensor
    hq: int
    wq: int
    hk: int
    wk: int
    query: Tensor | None = None
    key: Tensor | None = None
    key_bias: Tensor | None = None
    bias_x: Tensor | None = None
    bias_y: Tensor | None = None
    window_x: Tensor | None = None
    window_y: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.value.shape[0]

    @property
    def heads(self) -> int:
        return self.value.shape[1]

    @property
    def nq(self) -> int:
        return self.hq * self.wq

    @property
    def nk(self) -> int:
        return self.hk * self.wk

    def full_bias_x(self) -> Tensor | None:
        """``bias_x`` expanded to ``[N, h, Nq, wk]`` (None when absent)."""
        if self.bias_x is None:
            return None
        n, h = self.batch, self.heads
        return self.bias_x.expand(n, h, self.hq, self.wq, self.wk).reshape(n, h, self.nq, self.wk)

    def full_bias_y(self) -> Tensor | None:
        """``bias_y`` expanded to ``[N, h, Nq, hk]`` (None when absent)."""
        if self.bias_y is None:
            return None
        n, h = self.batch, self.heads
        return self.bias_y.expand(n, h, self.hq, self.wq, self.hk).reshape(n, h, self.nq, self.hk)

    def window_rows(self, start: int, stop: int) -> Tensor | None:
        """bool ``[stop - start, hk, wk]`` allowed keys for flat queries ``start:stop`` (None: all allowed)."""
        if self.window_x is None:
            return None
        idx = torch.arange(start, stop, device=self.window_x.device)
        qy, qx = idx // self.wq, idx % self.wq
        return self.window_y[qy][:, :, None] & self.window_x[qx][:, None, :]
