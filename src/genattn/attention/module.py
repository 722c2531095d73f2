"""Generalized attention (Zhu, Cheng, Zhang, Lin, Dai 2019, arXiv 1904.05873).

*An Empirical Study of Spatial Attention Mechanisms in Deep Networks* splits the energy of a self-attention
between a query pixel ``q`` and a key pixel ``k`` into four terms. Per head, with ``d = in_channels // heads``::

    energy(q, k) = [E1] q.k  +  [E2] q.r(q, k)  +  [E3] u.k  +  [E4] v.r(q, k)

    r(q, k) = (Wx emb(dx) + Wy emb(dy)) / sqrt(2),   dx = (qx * q_stride - kx * kv_stride) * position_magnitude

with ``q``/``k`` the projected query/key contents, ``u = appr_bias``, ``v = geom_bias``, ``Wx``/``Wy`` the
``appr_geom_fc_x``/``appr_geom_fc_y`` Linears and ``emb`` the sinusoidal embedding (wavelength 1000,
``D/4`` frequencies ``1000^(-4i/D)``, sines then cosines, ``D = position_embedding_dim``). There is no
``1/sqrt(d)`` scaling. The softmax runs over all keys (inside the spatial window when ``spatial_range >= 0``);
the output is ``x + gamma * proj_conv(attention @ values)``, bilinearly resized back when ``q_stride > 1``.

``attention_type`` is four '0'/'1' characters switching the terms on, in order:

* bit 1, E1: query content & key content (``query_conv``, ``key_conv``);
* bit 2, E2: query content & relative position (``query_conv``, ``appr_geom_fc_x/y``);
* bit 3, E3: key content only (``key_conv``, ``appr_bias``);
* bit 4, E4: relative position only (``appr_geom_fc_x/y``, ``geom_bias``).

'0000' (no term: every energy is 0, so each query averages the values of all keys, or of its window) is
accepted as mmcv accepts it.

Parameters carry mmcv's names and shapes and exist only when a term needs them, so MMDetection checkpoints load
unchanged. As in mmcv, ``num_heads`` need not divide ``in_channels``: each head is ``d = in_channels //
num_heads`` wide, the projections (``query_conv``/``key_conv``/``value_conv``, ``appr_geom_fc_x/y``,
``appr_bias``, ``geom_bias``) have ``d * num_heads`` outputs, and ``proj_conv`` maps those back to
``in_channels`` (256 channels with the default 9 heads: 252); only ``num_heads > in_channels`` (a zero-width
head, on which mmcv crashes) is refused.

Where the two differ:

* Unlike mmcv, every type is exact (mmcv transposes the query map in the E2-without-E4 y term, which crashes
  on non-square maps and is wrong on square ones), and ``spatial_range`` works for any channel count, map size,
  ``q_stride`` and type (mmcv builds its window table only for 256 or 512 channels and maps up to 84 or 42
  pixels, indexes it by query index rather than pixel with ``q_stride > 1``, and applies the first query's
  window to all queries in '0010').
* The mask is computed on the fly: mmcv stores a ``local_constraint_map`` buffer in the state dict when
  ``spatial_range >= 0``; no released checkpoint uses that setting; such a key is dropped silently on loading.
* Integer arguments also accept integral floats (``kv_stride=2.0`` means 2; mmcv runs a float stride only when
  it is 1.0 and crashes on float channel, head or window sizes); ``spatial_range`` takes any negative number
  for "no window", as mmcv's ``>= 0`` test does.
* Refused with a ``ValueError`` although mmcv's constructor accepts them: ``kv_stride``/``q_stride`` below 1
  (mmcv then skips the subsampling but scales the pixel offsets by 0 or a negative stride: wrong positions);
  a non-finite ``position_magnitude`` (NaN energies); ``position_embedding_dim`` (or ``in_channels``, its
  default) not divisible by 4 with E2 or E4 on (mmcv's embedding then has ``2 * ceil(D / 4)`` features
  against its Linear's ``D // 2`` inputs and crashes in forward); a fractional positive
  ``position_embedding_dim`` even where no position term uses it; booleans for integer arguments
  (``num_heads=True`` runs as one head in mmcv); and an ``attention_type`` other than a string of exactly
  four '0'/'1' characters: mmcv reads any sequence with ``bool(int(c))``, so a '2' counts as '1', a fifth
  character is ignored and a list works, none of which its documented format allows (most likely typos).

Computation paths (``impl``; all give the same result, see ``genattn.attention.paths``):

* ``'materialize'``: the original algorithm, full ``[N, h, Nq, Nk]`` energy. The yardstick.
* ``'chunked'``: flash-style custom autograd over blocks of queries; keeps no scores, recomputes them.
* ``'sdpa'``: ``scaled_dot_product_attention`` on vectors augmented with the decomposed position/bias terms.
* ``'flex'``: FlexAttention with a score_mod (CUDA; on a CPU for tests, see ``paths.flex``).
* ``'key_only'``: '0010' (or '0000') without spatial_range: one context vector per image.
* ``'separable'``: '0001': the softmax factorises into an x softmax times a y softmax.
* ``'auto'``: key_only / separable where they apply; otherwise flex on CUDA (with Triton); elsewhere chunked on
  large maps when position terms or a window are on, sdpa otherwise (see ``paths.candidates``). Off the CPU a
  path that fails, or disagrees with ``chunked``, is dropped with a warning (``paths.guard``). The environment
  variable ``GENATTN_ATTENTION_IMPL`` replaces ``'auto'``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genattn.attention import paths
from genattn.attention.config import AttentionConfig, check_int
from genattn.attention.position import axis_window, relative_features
from genattn.attention.terms import Terms


class GeneralizedAttention(nn.Module):
    """Generalized spatial attention; see the module docstring for the formula and the paths.

    Args:
        in_channels: channels ``C`` of the input map.
        spatial_range: window radius in input pixels; ``-1`` (any negative) for global attention.
        num_heads: heads ``h``, at most ``in_channels``; each is ``in_channels // num_heads`` wide (the
            projections have ``h * d`` channels, which need not be ``in_channels``).
        position_embedding_dim: ``D``; ``-1`` (any value <= 0) means ``in_channels``. Must be divisible by 4
            when E2 or E4 is on.
        position_magnitude: multiplier of the pixel offsets.
        kv_stride: keys/values are the input sampled every ``kv_stride`` rows and columns.
        q_stride: queries likewise; the output is bilinearly resized back.
        attention_type: four '0'/'1' characters (E1 E2 E3 E4); '0000' is uniform attention.
        impl: computation path, one of ``paths.IMPLS``; settable later as the attribute ``impl``.
    """

    def __init__(self, in_channels: int, spatial_range: int = -1, num_heads: int = 9,
                 position_embedding_dim: int = -1, position_magnitude: float = 1, kv_stride: int = 2,
                 q_stride: int = 1, attention_type: str = "1111", impl: str = "auto") -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        # The arguments' own checks live with the settings record; only those that need in_channels are here.
        cfg = AttentionConfig(spatial_range, num_heads, position_embedding_dim, position_magnitude, kv_stride,
                              q_stride, attention_type, impl)
        num_heads = cfg.num_heads
        if num_heads > in_channels:
            raise ValueError(f"num_heads ({num_heads}) must not exceed in_channels ({in_channels}): each head "
                             f"is in_channels // num_heads channels wide")

        self.in_channels = in_channels
        self.num_heads = num_heads
        self.kv_stride, self.q_stride = cfg.kv_stride, cfg.q_stride
        self.spatial_range = cfg.spatial_range
        self.position_magnitude = cfg.position_magnitude
        self.attention_type = cfg.attention_type
        default_dim = cfg.position_embedding_dim < 0
        self.position_embedding_dim = in_channels if default_dim else cfg.position_embedding_dim
        self.qk_embed_dim = self.v_dim = in_channels // num_heads
        e1, e2, e3, e4 = (c == "1" for c in cfg.attention_type)
        self.terms_on = (e1, e2, e3, e4)
        if (e2 or e4) and self.position_embedding_dim % 4:
            raise ValueError(f"position_embedding_dim must be divisible by 4 when E2 or E4 is on, got "
                             f"{self.position_embedding_dim}" + (" (in_channels)" if default_dim else ""))

        out_c = self.qk_embed_dim * num_heads
        if e1 or e2:
            self.query_conv = nn.Conv2d(in_channels, out_c, 1, bias=False)
        if e1 or e3:
            self.key_conv = nn.Conv2d(in_channels, out_c, 1, bias=False)
        self.value_conv = nn.Conv2d(in_channels, out_c, 1, bias=False)
        if e2 or e4:
            self.appr_geom_fc_x = nn.Linear(self.position_embedding_dim // 2, out_c, bias=False)
            self.appr_geom_fc_y = nn.Linear(self.position_embedding_dim // 2, out_c, bias=False)
        if e3:
            self.appr_bias = nn.Parameter(torch.empty(out_c))
        if e4:
            self.geom_bias = nn.Parameter(torch.empty(out_c))
        self.proj_conv = nn.Conv2d(out_c, in_channels, 1, bias=True)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.impl = impl
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    @property
    def impl(self) -> str:
        """The computation path; see ``genattn.attention.paths.IMPLS``."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        paths.check_impl(value, self.attention_type, self.spatial_range)
        self._impl = value

    def reset_parameters(self) -> None:
        """mmcv's initialisation: kaiming-uniform (fan_in, leaky_relu, a=1), zero biases, u/v in +-1/sqrt(2d)."""
        for name in ("query_conv", "key_conv", "value_conv", "proj_conv", "appr_geom_fc_x", "appr_geom_fc_y"):
            layer = getattr(self, name, None)
            if layer is not None:
                nn.init.kaiming_uniform_(layer.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        bound = 1.0 / math.sqrt(2 * self.qk_embed_dim)
        for name in ("appr_bias", "geom_bias"):
            param = getattr(self, name, None)
            if param is not None:
                nn.init.uniform_(param, -bound, bound)
        nn.init.zeros_(self.gamma)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # mmcv saves its precomputed window as a frozen parameter; we compute windows on the fly, so drop it
        # and let strict loading of such a checkpoint succeed.
        state_dict.pop(prefix + "local_constraint_map", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, spatial_range={self.spatial_range}, num_heads={self.num_heads}, "
                f"position_embedding_dim={self.position_embedding_dim}, "
                f"position_magnitude={self.position_magnitude}, kv_stride={self.kv_stride}, "
                f"q_stride={self.q_stride}, attention_type='{self.attention_type}', impl='{self.impl}'")

    # ------------------------------------------------------------------ computation
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, expected in_channels={self.in_channels}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must have a non-empty spatial size, got {tuple(x.shape[2:])}")

    def _position_features(self, hq: int, wq: int, hk: int, wk: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``Rx [h, wq, wk, d]`` and ``Ry [h, hq, hk, d]``."""
        common = dict(num_heads=self.num_heads, q_stride=self.q_stride, kv_stride=self.kv_stride,
                      magnitude=self.position_magnitude, embed_dim=self.position_embedding_dim,
                      device=x.device, dtype=x.dtype)
        rx = relative_features(self.appr_geom_fc_x, wq, wk, **common)
        ry = relative_features(self.appr_geom_fc_y, hq, hk, **common)
        return rx, ry

    def decompose(self, x: Tensor) -> Terms:
        """Project ``x`` ``[N, C, H, W]`` into the decomposed energy terms (see ``terms.Terms``)."""
        e1, e2, e3, e4 = self.terms_on
        n, h, d = x.shape[0], self.num_heads, self.qk_embed_dim
        # Sampling every s-th pixel from index 0 is what mmcv's AvgPool2d(kernel_size=1, stride=s) does.
        x_q = x[:, :, ::self.q_stride, ::self.q_stride]
        x_kv = x[:, :, ::self.kv_stride, ::self.kv_stride]
        hq, wq = x_q.shape[-2:]
        hk, wk = x_kv.shape[-2:]
        # conv channel c belongs to head c // d: [N, h*d, H, W] -> [N, h, H*W, d]
        t = Terms(value=self.value_conv(x_kv).view(n, h, d, hk * wk).transpose(-1, -2), hq=hq, wq=wq, hk=hk, wk=wk)
        query = self.query_conv(x_q).view(n, h, d, hq * wq).transpose(-1, -2) if (e1 or e2) else None
        key = self.key_conv(x_kv).view(n, h, d, hk * wk).transpose(-1, -2) if (e1 or e3) else None
        if e1:
            t.query, t.key = query, key
        if e3:
            t.key_bias = torch.matmul(key, self.appr_bias.view(h, d, 1).to(key.dtype)).squeeze(-1)
        if e2 or e4:
            rx, ry = self._position_features(hq, wq, hk, wk, x)
            if e2:
                q5 = query.reshape(n, h, hq, wq, d)
                if e4:  # (q + v) . r: the E2 and E4 terms in one product, as mmcv computes them
                    q5 = q5 + self.geom_bias.view(1, h, 1, 1, d).to(q5.dtype)
                t.bias_x = torch.einsum("nhyxd,hxkd->nhyxk", q5, rx.to(q5.dtype))
                t.bias_y = torch.einsum("nhyxd,hykd->nhyxk", q5, ry.to(q5.dtype))
            else:  # E4 alone, v . r: the same for every image and every query row (x) / column (y)
                v = self.geom_bias.view(h, d)
                t.bias_x = torch.einsum("hxkd,hd->hxk", rx, v.to(rx.dtype))[None, :, None]  # [1,h,1,wq,wk]
                t.bias_y = torch.einsum("hykd,hd->hyk", ry, v.to(ry.dtype))[None, :, :, None]  # [1,h,hq,1,hk]
        if self.spatial_range >= 0:
            t.window_x = axis_window(wq, wk, self.q_stride, self.kv_stride, self.spatial_range, device=x.device)
            t.window_y = axis_window(hq, hk, self.q_stride, self.kv_stride, self.spatial_range, device=x.device)
        return t

    def forward(self, x: Tensor) -> Tensor:
        """Apply attention.

        Args:
            x: ``[N, C, H, W]``.

        Returns:
            ``[N, C, H, W]``: ``x + gamma * proj_conv(attention @ values)``. Internally queries are
            ``[N, h, Hq*Wq, d]`` (``Hq = ceil(H / q_stride)``), keys/values ``[N, h, Hk*Wk, d]``
            (``Hk = ceil(H / kv_stride)``).
        """
        self._check_input(x)
        t = self.decompose(x)
        # [N, h, Nq', dv]; Nq' = 1 for key_only (one context vector per image)
        out = paths.attend(self.impl, self.attention_type, self.spatial_range, t)
        n = x.shape[0]
        hq, wq = (1, 1) if out.shape[2] == 1 and t.nq != 1 else (t.hq, t.wq)
        out = out.transpose(-1, -2).reshape(n, self.num_heads * self.v_dim, hq, wq)
        out = self.proj_conv(out)
        if out.shape[-2:] != x.shape[-2:] and (hq, wq) != (1, 1):
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        # A 1x1 map (key_only) broadcasts: bilinear resizing of a constant map is that constant.
        return torch.addcmul(x, self.gamma, out)  # x + gamma * out in one pass

    @torch.no_grad()
    def point_attention(self, x: Tensor, y: int, x_: int) -> dict[str, Tensor]:
        """Attention maps of one query pixel, for visualisation.

        Args:
            x: ``[N, C, H, W]`` input map.
            y, x_: the query pixel on the input map; with ``q_stride > 1`` the nearest query sample is used.

        Returns:
            ``'all'``: the module's attention of that query, and ``'E1'``..``'E4'`` (the enabled terms): the
            softmax of that term's energy alone (inside the spatial window); each ``[N, h, Hk, Wk]`` summing
            to 1 over ``(Hk, Wk)``.
        """
        self._check_input(x)
        height, width = x.shape[-2:]
        for name, value, size in (("y", y, height), ("x_", x_, width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < size:
                raise ValueError(f"{name} must be an integer pixel index in [0, {size}), got {value!r}")
        e1, e2, e3, e4 = self.terms_on
        t = self.decompose(x)
        n, h, d = x.shape[0], self.num_heads, self.qk_embed_dim
        qy = min((int(y) + self.q_stride // 2) // self.q_stride, t.hq - 1)
        qx = min((int(x_) + self.q_stride // 2) // self.q_stride, t.wq - 1)
        i = qy * t.wq + qx
        energies: dict[str, Tensor] = {}
        grid = (n, h, t.hk, t.wk)
        if e1:
            energies["E1"] = torch.einsum("nhd,nhkd->nhk", t.query[:, :, i], t.key).view(grid)
        if e2 or e4:
            rx, ry = self._position_features(t.hq, t.wq, t.hk, t.wk, x)
            rx, ry = rx[:, qx], ry[:, qy]  # [h, wk, d], [h, hk, d]
        if e2:
            query = self.query_conv(x[:, :, ::self.q_stride, ::self.q_stride]).view(n, h, d, -1)[..., i]
            ex = torch.einsum("nhd,hkd->nhk", query, rx.to(query.dtype))
            ey = torch.einsum("nhd,hkd->nhk", query, ry.to(query.dtype))
            energies["E2"] = ex[:, :, None, :] + ey[:, :, :, None]
        if e3:
            energies["E3"] = t.key_bias.view(grid)
        if e4:
            v = self.geom_bias.view(h, d)
            ex = torch.einsum("hkd,hd->hk", rx, v.to(rx.dtype))
            ey = torch.einsum("hkd,hd->hk", ry, v.to(ry.dtype))
            energies["E4"] = (ex[:, None, :] + ey[:, :, None]).expand(grid)
        total = sum(energies.values(), x.new_zeros(grid))  # '0000': all energies 0, uniform attention
        maps = {"all": total, **energies}
        if t.window_x is not None:
            allowed = t.window_y[qy][:, None] & t.window_x[qx][None, :]  # [hk, wk]
            maps = {k: v.masked_fill(~allowed, float("-inf")) for k, v in maps.items()}
        return {k: torch.softmax(v.reshape(n, h, -1), dim=-1, dtype=torch.promote_types(v.dtype, torch.float32))
                .view(grid) for k, v in maps.items()}
