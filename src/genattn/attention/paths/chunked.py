"""Flash-style attention over blocks of queries with the decomposed energy (FlashAttention-2 backward).

The forward pass keeps only its inputs and output; the backward pass recomputes each block's probabilities and
uses ``dS = P * (dP - rowsum(dO * O))``. A block holds complete rows (all keys of its queries), so recomputing
``P`` with the same softmax reproduces the forward's bit for bit and even the per-row logsumexp need not be kept
(on CPU ``torch.softmax`` is also much faster than ``exp(S - lse)``: its fused exponential). Peak extra memory is one block of
``[N, h, block, Nk]`` scores instead of the full energy. The small position terms ``bias_x``/``bias_y``
(``[N, h, Nq, Wk]``/``[N, h, Nq, Hk]``) and the E3 key bias are inputs, computed outside with ordinary autograd;
their gradients are ``dS`` summed over the other key axis (over queries, for the key bias).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from genattn.attention.paths.materialize import stats_dtype
from genattn.attention.terms import Terms

# Elements of one block of scores, [N, h, block, Nk]: 512K float32 = 2 MB stays in cache on CPU, so the
# elementwise passes over a block (bias adds, softmax, dS) run at cache speed, not memory speed.
BLOCK_ELEMENTS = 1 << 19


def _block_scores(q, k, c, bx, by, t, start, stop, dtype):
    """Energy of flat queries ``start:stop``: ``[N, h, b, Nk]`` in ``dtype`` (``-inf`` outside the window)."""
    n, h = t.batch, t.heads
    b = stop - start
    if q is not None:
        s = torch.matmul(q[:, :, start:stop], k.transpose(-1, -2)).to(dtype)
    else:
        s = torch.zeros((n, h, b, t.nk), dtype=dtype, device=t.value.device)
    grid = s.view(n, h, b, t.hk, t.wk)
    if c is not None:
        grid += c.view(n, h, 1, t.hk, t.wk)
    if bx is not None:
        grid += bx[:, :, start:stop, None, :]
    if by is not None:
        grid += by[:, :, start:stop, :, None]
    allowed = t.window_rows(start, stop)
    if allowed is not None:
        s.masked_fill_(~allowed.view(1, 1, b, t.nk), float("-inf"))
    return s


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Terms, block: int, q, k, v, c, bx, by):
        dtype = stats_dtype(v.dtype)
        with torch.autocast(v.device.type, enabled=False):
            out = v.new_empty((t.batch, t.heads, t.nq, v.shape[-1]))
            for start in range(0, t.nq, block):
                stop = min(start + block, t.nq)
                p = torch.softmax(_block_scores(q, k, c, bx, by, t, start, stop, dtype), dim=-1)
                out[:, :, start:stop] = torch.matmul(p.to(v.dtype), v)
        ctx.t, ctx.block = t, block
        ctx.save_for_backward(q, k, v, c, bx, by, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, c, bx, by, out = ctx.saved_tensors
        t, block = ctx.t, ctx.block
        n, h = t.batch, t.heads
        dtype = stats_dtype(v.dtype)
        need = ctx.needs_input_grad
        with torch.autocast(v.device.type, enabled=False):
            d_out = d_out.to(v.dtype)
            dq = torch.zeros_like(q) if q is not None and need[2] else None
            dk = torch.zeros_like(k, dtype=dtype) if k is not None and need[3] else None
            dv = torch.zeros_like(v, dtype=dtype) if need[4] else None
            dc = torch.zeros((n, h, t.nk), dtype=dtype, device=v.device) if c is not None and need[5] else None
            dbx = torch.zeros((n, h, t.nq, t.wk), dtype=dtype, device=v.device) if bx is not None and need[6] else None
            dby = torch.zeros((n, h, t.nq, t.hk), dtype=dtype, device=v.device) if by is not None and need[7] else None
            # rowsum(dO * O) = rowsum(dP * P): the softmax backward's correction per query.
            delta = (d_out.to(dtype) * out.to(dtype)).sum(-1, keepdim=True)
            for start in range(0, t.nq, block):
                stop = min(start + block, t.nq)
                p = torch.softmax(_block_scores(q, k, c, bx, by, t, start, stop, dtype), dim=-1)
                d_blk = d_out[:, :, start:stop]
                if dv is not None:
                    dv += torch.matmul(p.transpose(-1, -2).to(v.dtype), d_blk)
                dp = torch.matmul(d_blk, v.transpose(-1, -2)).to(dtype)
                ds = p.mul_(dp.sub_(delta[:, :, start:stop]))  # dS, in place of P
                grid = ds.view(n, h, stop - start, t.hk, t.wk)
                if dq is not None:
                    dq[:, :, start:stop] = torch.matmul(ds.to(q.dtype), k)
                if dk is not None:
                    dk += torch.matmul(ds.transpose(-1, -2).to(q.dtype), q[:, :, start:stop])
                if dc is not None:
                    dc += ds.sum(2)
                if dbx is not None:
                    dbx[:, :, start:stop] = grid.sum(3)
                if dby is not None:
                    dby[:, :, start:stop] = grid.sum(4)

        def cast(g, ref):
            return None if g is None else g.to(ref.dtype)

        return (None, None, dq, cast(dk, k), cast(dv, v), cast(dc, c), cast(dbx, bx), cast(dby, by))


def block_size(t: Terms, elements: int | None = None) -> int:
    """Queries per block so that one block of scores holds about ``elements`` (default ``BLOCK_ELEMENTS``)."""
    elements = elements or BLOCK_ELEMENTS
    per_query = max(t.batch * t.heads * t.nk, 1)
    return max(1, min(t.nq, elements // per_query))


def chunked_attention(t: Terms, block: int | None = None) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` computed block by block with a recomputing backward."""
    def dense(x):  # the conv outputs arrive transposed; per-block matmuls want contiguous rows
        return None if x is None else x.contiguous()

    return _ChunkedAttention.apply(t, block or block_size(t), dense(t.query), dense(t.key), dense(t.value),
                                   dense(t.key_bias), dense(t.full_bias_x()), dense(t.full_bias_y()))
