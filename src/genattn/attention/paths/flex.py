"""FlexAttention (CUDA): the fused, compiled kernel with the decomposed energy as a ``score_mod``.

``score(q, k) = q.k + c[k] + bias_x[q, kx] + bias_y[q, ky]``; the spatial window is a block mask, so blocks
outside every window are skipped. Gradients reach the captured ``c``/``bias_x``/``bias_y`` through FlexAttention's
support for captured tensors. The CUDA kernel needs head widths of at least ``FLEX_MIN_DIM`` (``tl.dot``),
while a head is ``in_channels // num_heads`` wide (1 for 16 channels and mmcv's default 9 heads): narrower
queries, keys and values are zero-padded, which adds nothing to ``q.k`` and only zero columns (cut off) to the
output. The score_mod/mask_mod logic and this padding (heads 1, 2 and 5 wide) were checked against the other
paths through inductor's CPU backend (forward only: FlexAttention has no CPU backward); the CUDA tests skip
without a GPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from genattn.attention.terms import Terms

# Smallest query/key and value width FlexAttention's CUDA kernel accepts.
FLEX_MIN_DIM = 16


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Detection inputs change size from batch to batch: let dynamo mark sizes dynamic after the first recompile
    # instead of compiling once per shape.
    return torch.compile(flex_attention)


def flex_available(device: torch.device) -> bool:
    """FlexAttention needs CUDA and Triton."""
    if device.type != "cuda":
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def flex_attention_path(t: Terms) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` through FlexAttention (CUDA only)."""
    from torch.nn.attention.flex_attention import create_block_mask

    dev = t.value.device
    if not flex_available(dev):
        raise ValueError(f"impl='flex' needs a CUDA device with Triton, got device {dev}")
    n, h, wq, wk = t.batch, t.heads, t.wq, t.wk
    dtype = t.value.dtype
    if t.query is not None:
        q, k = t.query.to(dtype), t.key.to(dtype)
    else:  # no content term: q.k = 0, the score is the score_mod alone
        q = t.value.new_zeros((n, h, t.nq, FLEX_MIN_DIM))
        k = t.value.new_zeros((n, h, t.nk, FLEX_MIN_DIM))
    if q.shape[-1] < FLEX_MIN_DIM:  # zero columns add nothing to q.k
        q, k = (F.pad(a, (0, FLEX_MIN_DIM - a.shape[-1])) for a in (q, k))
    dv = t.value.shape[-1]
    v = F.pad(t.value.to(dtype), (0, max(0, FLEX_MIN_DIM - dv)))
    c, bx, by = t.key_bias, t.full_bias_x(), t.full_bias_y()

    def score_mod(score, b, head, qi, kj):
        if c is not None:
            score = score + c[b, head, kj]
        if bx is not None:
            score = score + bx[b, head, qi, kj % wk]
        if by is not None:
            score = score + by[b, head, qi, kj // wk]
        return score

    block_mask = None
    if t.window_x is not None:
        win_x, win_y = t.window_x, t.window_y

        def mask_mod(b, head, qi, kj):
            return win_y[qi // wq, kj // wk] & win_x[qi % wq, kj % wk]

        block_mask = create_block_mask(mask_mod, None, None, t.nq, t.nk, device=dev)
    out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out[..., :dv]
