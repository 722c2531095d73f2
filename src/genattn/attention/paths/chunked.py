"""Flash-style attention over blocks of queries with the decomposed energy (FlashAttention-2 backward).

The forward pass keeps only its inputs and output; the backward pass recomputes each block's probabilities and
uses ``dS = P * (dP - rowsum(dO * O))``. A block holds complete rows (all keys of its queries), so recomputing
``P`` with the same softmax reproduces the forward's bit for bit and no per-row statistics need be kept (on CPU
``torch.softmax`` is also faster than ``exp(S - lse)``: its exponential is fused with the row reductions). Peak
extra memory is two blocks of scores per worker (``BLOCK_ELEMENTS`` each) instead of the full energy.

A block is some queries of one (image, head) pair (several whole pairs on small maps), and its work is a
handful of large in-place operations on per-worker buffers sized for the CPU's caches:

* forward: ``S = bias_x + bias_y`` (one broadcast add), ``S += [q, 1] @ [k, c]^T`` (one ``baddbmm``: the E3 key
  bias rides along as an extra column), ``softmax`` in place, ``out = S @ v``;
* backward: ``S`` again, ``dv += S^T @ dO``, ``D = [dO, delta] @ [v, -1]^T`` (= ``dP - delta``, again one
  matmul), ``D *= S`` (= ``dS``), ``dq = D @ k``, ``[dk, dc] += D^T @ [q, 1]`` (the ones column sums ``dS`` over
  queries: the key bias's gradient), and ``dS`` summed over the other key axis for ``bias_x``/``bias_y``.

The position terms ``bias_x``/``bias_y`` (``[N, h, Nq, Wk]``/``[N, h, Nq, Hk]``) and the E3 key bias are
inputs, computed outside with ordinary autograd. Scores and statistics are kept in at least float32; inputs of
lower precision are promoted for the block work and the gradients cast back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from genattn.attention.paths.materialize import stats_dtype
from genattn.attention.terms import Terms

# Scores in one block, [pairs, queries, Nk]: 512K float32 = 2 MB, within the CPU's caches, so the elementwise
# passes over a block (bias add, softmax, dS) run at cache speed, not memory speed.
BLOCK_ELEMENTS = 1 << 19


class _Operands:
    """The block inputs in the layout the per-block matmuls want, all ``[N*h, ...]`` in the scores' dtype.

    ``qa = [query, 1]`` and ``ka = [key, key_bias]`` (either part absent when its term is off; both None when
    there is neither E1 nor E3), ``k [N*h, Nk, d]`` (E1), ``bx [N*h, Nq, Wk]``, ``by [N*h, Nq, Hk]``,
    ``v [N*h, Nk, dv]``.
    """

    def __init__(self, t: Terms, q, k, v, c, bx, by, dtype):
        nh = t.batch * t.heads
        self.t, self.nh = t, nh
        self.d = 0 if q is None else q.shape[-1]
        q_parts, k_parts = [], []
        if q is not None:
            q_parts.append(q.reshape(nh, t.nq, self.d).to(dtype))
            k_parts.append(k.reshape(nh, t.nk, self.d).to(dtype))
        if c is not None:
            q_parts.append(torch.ones((nh, t.nq, 1), dtype=dtype, device=v.device))
            k_parts.append(c.reshape(nh, t.nk, 1).to(dtype))
        self.qa = torch.cat(q_parts, -1) if q_parts else None
        self.ka = torch.cat(k_parts, -1) if k_parts else None
        self.k = None if k is None else k_parts[0].contiguous()  # for dq = dS @ k
        self.bx = None if bx is None else bx.reshape(nh, t.nq, t.wk).to(dtype).contiguous()
        self.by = None if by is None else by.reshape(nh, t.nq, t.hk).to(dtype).contiguous()
        self.v = v.reshape(nh, t.nk, v.shape[-1]).to(dtype).contiguous()

    def scores(self, buf: Tensor, blk: "Block") -> Tensor:
        """Write the energy of block ``blk`` into ``buf`` and return it as ``[heads, queries, Nk]``."""
        t, heads, rows = self.t, blk.heads, blk.rows
        s = buf[: (heads.stop - heads.start) * (rows.stop - rows.start) * t.nk].view(
            heads.stop - heads.start, rows.stop - rows.start, t.nk)
        grid = s.view(*s.shape[:2], t.hk, t.wk)
        bx = None if self.bx is None else self.bx[heads, rows, None, :]
        by = None if self.by is None else self.by[heads, rows, :, None]
        if bx is not None and by is not None:
            torch.add(bx, by, out=grid)
        elif bx is not None or by is not None:
            grid.copy_(bx if bx is not None else by)
        if self.qa is None:
            if bx is None and by is None:
                s.zero_()
        elif bx is None and by is None:
            torch.bmm(self.qa[heads, rows], self.ka[heads].transpose(1, 2), out=s)
        else:
            s.baddbmm_(self.qa[heads, rows], self.ka[heads].transpose(1, 2))
        allowed = t.window_rows(rows.start, rows.stop)
        if allowed is not None:
            s.masked_fill_(~allowed.view(1, -1, t.nk), float("-inf"))
        return s


class Block(NamedTuple):
    heads: slice  # of the N*h (image, head) pairs
    rows: slice  # of the flat queries


def _softmax_(s: Tensor) -> Tensor:
    """Softmax over the last dimension, in place."""
    return torch.ops.aten._softmax.out(s, -1, False, out=s)


def blocks(t: Terms, elements: int | None = None) -> list[list[Block]]:
    """The blocks of one call, grouped by the worker that runs them.

    A block covers whole rows (all keys) of some queries of some (image, head) pairs, about ``elements``
    (default ``BLOCK_ELEMENTS``) scores: one pair and as many queries as fit on large maps, several pairs and
    all queries on small ones. Workers (one per intra-op thread on CPU, at most one per group of pairs) own
    disjoint pairs, so the gradients of keys and values they accumulate never overlap.
    """
    elements = elements or BLOCK_ELEMENTS
    nh, nq, nk = t.batch * t.heads, t.nq, max(t.nk, 1)
    per_pair = nq * nk
    if per_pair >= elements:
        heads, rows = 1, max(1, elements // nk)
        rows = -(-nq // -(-nq // rows))  # the same number of blocks, evened out
    else:
        heads, rows = max(1, min(nh, elements // per_pair)), nq
    groups = [slice(h, min(h + heads, nh)) for h in range(0, nh, heads)]
    workers = 1
    if t.value.device.type == "cpu":
        workers = max(1, min(torch.get_num_threads(), len(groups)))
    return [[Block(g, slice(r, min(r + rows, nq))) for g in groups[w::workers] for r in range(0, nq, rows)]
            for w in range(workers)]


def _run(plan: list[list[Block]], work, device_type: str) -> None:
    """Call ``work(block, slot)`` for every block, worker ``slot``'s blocks in its own thread.

    On CPU with several intra-op threads, each worker is a Python thread running single-threaded ops (torch
    releases the GIL inside ops). A block's ops are small, and with intra-op parallelism each one would be an
    OpenMP fork/join: hundreds per call, which on busy cores costs more than the work.
    """
    # Grad and inference mode are per thread: a worker must run in the caller's inference mode, or the buffers
    # the caller made under torch.inference_mode() could not be written in place.
    inference = torch.is_inference_mode_enabled()

    def run(slot):
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast(device_type, enabled=False):
            for blk in plan[slot]:
                work(blk, slot)

    if len(plan) == 1:
        run(0)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' ops run single-threaded; restored below
    try:
        with ThreadPoolExecutor(len(plan)) as pool:
            list(pool.map(run, range(len(plan))))
    finally:
        torch.set_num_threads(threads)


def _buffers(plan: list[list[Block]], t: Terms, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """One scores buffer per worker, as large as its largest block."""
    size = max(((b.heads.stop - b.heads.start) * (b.rows.stop - b.rows.start) * t.nk for w in plan for b in w),
               default=0)
    return [torch.empty(size, dtype=dtype, device=device) for _ in plan]


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Terms, elements: int | None, q, k, v, c, bx, by):
        dtype = stats_dtype(v.dtype)
        ops = _Operands(t, q, k, v, c, bx, by, dtype)
        plan = blocks(t, elements)
        out = torch.empty((ops.nh, t.nq, v.shape[-1]), dtype=dtype, device=v.device)
        bufs = _buffers(plan, t, dtype, v.device)

        def work(blk, slot):
            p = _softmax_(ops.scores(bufs[slot], blk))
            torch.bmm(p, ops.v[blk.heads], out=out[blk.heads, blk.rows])

        _run(plan, work, v.device.type)
        ctx.t, ctx.elements = t, elements
        ctx.save_for_backward(q, k, v, c, bx, by, out)
        return out.view(t.batch, t.heads, t.nq, v.shape[-1]).to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, c, bx, by, out = ctx.saved_tensors
        t = ctx.t
        dtype = out.dtype
        ops = _Operands(t, q, k, v, c, bx, by, dtype)
        nh, dev, d = ops.nh, v.device, ops.d
        need = ctx.needs_input_grad
        plan = blocks(t, ctx.elements)
        d_out = d_out.reshape(out.shape).to(dtype)
        # rowsum(dO * O) = rowsum(dP * P): the softmax backward's correction per query; [dO, delta] @ [v, -1]^T
        # is then dP - delta in one matmul.
        delta = (d_out * out).sum(-1, keepdim=True)
        d_out_a = torch.cat((d_out, delta), -1)
        v_a = torch.cat((ops.v, ops.v.new_full((nh, t.nk, 1), -1.0)), -1)

        def zeros(cond, shape):
            return torch.zeros(shape, dtype=dtype, device=dev) if cond else None

        dq = zeros(q is not None and need[2], (nh, t.nq, d))
        dka = zeros(ops.qa is not None and ((q is not None and need[3]) or (c is not None and need[5])),
                    None if ops.qa is None else ops.ka.shape)
        dv = zeros(need[4], ops.v.shape)
        dbx = zeros(bx is not None and need[6], (nh, t.nq, t.wk))
        dby = zeros(by is not None and need[7], (nh, t.nq, t.hk))
        s_bufs, d_bufs = _buffers(plan, t, dtype, dev), _buffers(plan, t, dtype, dev)

        def work(blk, slot):
            hs, rs = blk.heads, blk.rows
            p = _softmax_(ops.scores(s_bufs[slot], blk))
            if dv is not None:
                dv[hs].baddbmm_(p.transpose(1, 2), d_out[hs, rs])
            ds = d_bufs[slot][: p.numel()].view(p.shape)
            torch.bmm(d_out_a[hs, rs], v_a[hs].transpose(1, 2), out=ds)
            ds.mul_(p)  # dS = P * (dP - delta)
            if dq is not None:
                torch.bmm(ds, ops.k[hs], out=dq[hs, rs])
            if dka is not None:  # [dk, dc]: the ones column of qa sums dS over the queries
                dka[hs].baddbmm_(ds.transpose(1, 2), ops.qa[hs, rs])
            grid = ds.view(*ds.shape[:2], t.hk, t.wk)
            if dbx is not None:
                torch.sum(grid, 2, out=dbx[hs, rs])
            if dby is not None:
                torch.sum(grid, 3, out=dby[hs, rs])

        _run(plan, work, dev.type)

        def cast(g, ref):
            return None if g is None or ref is None else g.view(ref.shape).to(ref.dtype)

        dk = dka[..., :d] if dka is not None and q is not None and need[3] else None
        dc = dka[..., -1] if dka is not None and c is not None and need[5] else None
        return (None, None, cast(dq, q), cast(dk, k), cast(dv, v), cast(dc, c), cast(dbx, bx), cast(dby, by))


def chunked_attention(t: Terms, elements: int | None = None) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` computed block by block with a recomputing backward.

    ``elements``: scores per block (default ``BLOCK_ELEMENTS``); any value gives the same result.
    """
    return _ChunkedAttention.apply(t, elements, t.query, t.key, t.value, t.key_bias, t.full_bias_x(),
                                   t.full_bias_y())
