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

from concurrent.futures import ThreadPoolExecutor

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


def _for_blocks(nq: int, block: int, work, device_type: str) -> None:
    """Call ``work(start, stop, slot)`` for every block of queries.

    On CPU with several intra-op threads, blocks are shared out to that many Python worker threads, each
    running single-threaded ops (torch releases the GIL inside ops). A block's ops are small, and with
    intra-op parallelism each one would be an OpenMP fork/join: hundreds per call, which on busy cores costs
    more than the work. ``slot`` (< ``workers(nq, block)``) names the worker, for private accumulators.
    """
    starts = range(0, nq, block)
    workers = _workers(nq, block, device_type)

    def run(slot):
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            for start in starts[slot::workers]:
                work(start, min(start + block, nq), slot)

    if workers == 1:
        run(0)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' ops run single-threaded; restored below
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(workers)))
    finally:
        torch.set_num_threads(threads)


def _workers(nq: int, block: int, device_type: str) -> int:
    if device_type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), -(-nq // block)))


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Terms, block: int, q, k, v, c, bx, by):
        dtype = stats_dtype(v.dtype)
        out = v.new_empty((t.batch, t.heads, t.nq, v.shape[-1]))

        def work(start, stop, slot):
            p = torch.softmax(_block_scores(q, k, c, bx, by, t, start, stop, dtype), dim=-1)
            out[:, :, start:stop] = torch.matmul(p.to(v.dtype), v)

        _for_blocks(t.nq, block, work, v.device.type)
        ctx.t, ctx.block = t, block
        ctx.save_for_backward(q, k, v, c, bx, by, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, c, bx, by, out = ctx.saved_tensors
        t, block = ctx.t, ctx.block
        n, h, dev = t.batch, t.heads, v.device
        dtype = stats_dtype(v.dtype)
        need = ctx.needs_input_grad
        workers = _workers(t.nq, block, dev.type)

        def private(cond, shape):  # one accumulator per worker, summed at the end
            return [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(workers)] if cond else None

        d_out = d_out.to(v.dtype)
        dq = torch.zeros_like(q) if q is not None and need[2] else None
        dk = private(k is not None and need[3], k.shape if k is not None else None)
        dv = private(need[4], v.shape)
        dc = private(c is not None and need[5], (n, h, t.nk))
        dbx = torch.zeros((n, h, t.nq, t.wk), dtype=dtype, device=dev) if bx is not None and need[6] else None
        dby = torch.zeros((n, h, t.nq, t.hk), dtype=dtype, device=dev) if by is not None and need[7] else None
        # rowsum(dO * O) = rowsum(dP * P): the softmax backward's correction per query.
        delta = (d_out.to(dtype) * out.to(dtype)).sum(-1, keepdim=True)

        def work(start, stop, slot):
            p = torch.softmax(_block_scores(q, k, c, bx, by, t, start, stop, dtype), dim=-1)
            d_blk = d_out[:, :, start:stop]
            if dv is not None:
                dv[slot] += torch.matmul(p.transpose(-1, -2).to(v.dtype), d_blk)
            dp = torch.matmul(d_blk, v.transpose(-1, -2)).to(dtype)
            ds = p.mul_(dp.sub_(delta[:, :, start:stop]))  # dS, in place of P
            grid = ds.view(n, h, stop - start, t.hk, t.wk)
            if dq is not None:
                dq[:, :, start:stop] = torch.matmul(ds.to(q.dtype), k)
            if dk is not None:
                dk[slot] += torch.matmul(ds.transpose(-1, -2).to(q.dtype), q[:, :, start:stop])
            if dc is not None:
                dc[slot] += ds.sum(2)
            if dbx is not None:
                dbx[:, :, start:stop] = grid.sum(3)
            if dby is not None:
                dby[:, :, start:stop] = grid.sum(4)

        _for_blocks(t.nq, block, work, dev.type)

        def cast(g, ref):
            if isinstance(g, list):
                g = g[0] if len(g) == 1 else torch.stack(g).sum(0)
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
