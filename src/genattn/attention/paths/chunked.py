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

Both passes are ``torch.library`` custom operators, ``genattn::chunked_attention`` and
``genattn::chunked_attention_backward``, the second registered as the first's autograd formula: torch.compile
cannot trace their worker threads and ``out=`` kernels, so it keeps each as one opaque call in its graph (no
graph break), and traces shapes through their fake implementations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import torch
from torch import Tensor

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


def _terms(value, query, key, key_bias, window_x, window_y, hq, wq, hk, wk) -> Terms:
    return Terms(value=value, hq=hq, wq=wq, hk=hk, wk=wk, query=query, key=key, key_bias=key_bias,
                 window_x=window_x, window_y=window_y)


# The two passes are custom operators (``torch.library``): opaque to torch.compile, which cannot trace Python
# threads or out= kernels, with shape-only "fake" versions for tracing and the backward registered as the
# forward's autograd formula. Outputs are [N*h, ...] in the scores' dtype (float32 or float64); the callers
# reshape and cast.
@torch.library.custom_op("genattn::chunked_attention", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def _forward_op(value: Tensor, query: Optional[Tensor], key: Optional[Tensor], key_bias: Optional[Tensor],
                bias_x: Optional[Tensor], bias_y: Optional[Tensor], window_x: Optional[Tensor],
                window_y: Optional[Tensor], hq: int, wq: int, hk: int, wk: int, elements: int) -> Tensor:
    """``[N*h, Nq, dv]``: the attention output (``bias_x``/``bias_y`` expanded: ``[N, h, Nq, wk | hk]``)."""
    t = _terms(value, query, key, key_bias, window_x, window_y, hq, wq, hk, wk)
    dtype = stats_dtype(value.dtype)
    ops = _Operands(t, query, key, value, key_bias, bias_x, bias_y, dtype)
    plan = blocks(t, elements)
    out = torch.empty((ops.nh, t.nq, value.shape[-1]), dtype=dtype, device=value.device)
    bufs = _buffers(plan, t, dtype, value.device)

    def work(blk, slot):
        p = _softmax_(ops.scores(bufs[slot], blk))
        torch.bmm(p, ops.v[blk.heads], out=out[blk.heads, blk.rows])

    _run(plan, work, value.device.type)
    return out


@_forward_op.register_fake
def _(value, query, key, key_bias, bias_x, bias_y, window_x, window_y, hq, wq, hk, wk, elements):
    n, h, _, dv = value.shape
    return value.new_empty((n * h, hq * wq, dv), dtype=stats_dtype(value.dtype))


# Gradients the backward op computes, in the order of its outputs; a gradient not asked for is an empty tensor.
_GRADS = ("query", "key", "value", "key_bias", "bias_x", "bias_y")


@torch.library.custom_op("genattn::chunked_attention_backward", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def _backward_op(grad: Tensor, out: Tensor, value: Tensor, query: Optional[Tensor], key: Optional[Tensor],
                 key_bias: Optional[Tensor], bias_x: Optional[Tensor], bias_y: Optional[Tensor],
                 window_x: Optional[Tensor], window_y: Optional[Tensor], hq: int, wq: int, hk: int, wk: int,
                 elements: int, needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dq, d[k, c], dv, dbx, dby)``, ``[N*h, ...]`` in ``out``'s dtype; ``needs`` follows ``_GRADS``.

    The key's and the key bias's gradients come out of one matmul as ``[N*h, Nk, d + 1]`` (either part absent
    when its term is off).
    """
    t = _terms(value, query, key, key_bias, window_x, window_y, hq, wq, hk, wk)
    dtype = out.dtype
    ops = _Operands(t, query, key, value, key_bias, bias_x, bias_y, dtype)
    nh, dev, d = ops.nh, value.device, ops.d
    need = dict(zip(_GRADS, needs))
    plan = blocks(t, elements)
    d_out = grad.reshape(out.shape).to(dtype)
    # rowsum(dO * O) = rowsum(dP * P): the softmax backward's correction per query; [dO, delta] @ [v, -1]^T
    # is then dP - delta in one matmul.
    delta = (d_out * out).sum(-1, keepdim=True)
    d_out_a = torch.cat((d_out, delta), -1)
    v_a = torch.cat((ops.v, ops.v.new_full((nh, t.nk, 1), -1.0)), -1)

    def zeros(cond, shape):
        return torch.zeros(shape if cond else (0,), dtype=dtype, device=dev)

    dq = zeros(query is not None and need["query"], (nh, t.nq, d))
    dka = zeros(ops.qa is not None and (need["key"] or need["key_bias"]), None if ops.qa is None else ops.ka.shape)
    dv = zeros(need["value"], ops.v.shape)
    dbx = zeros(bias_x is not None and need["bias_x"], (nh, t.nq, t.wk))
    dby = zeros(bias_y is not None and need["bias_y"], (nh, t.nq, t.hk))
    s_bufs, d_bufs = _buffers(plan, t, dtype, dev), _buffers(plan, t, dtype, dev)

    def work(blk, slot):
        hs, rs = blk.heads, blk.rows
        p = _softmax_(ops.scores(s_bufs[slot], blk))
        if dv.numel():
            dv[hs].baddbmm_(p.transpose(1, 2), d_out[hs, rs])
        ds = d_bufs[slot][: p.numel()].view(p.shape)
        torch.bmm(d_out_a[hs, rs], v_a[hs].transpose(1, 2), out=ds)
        ds.mul_(p)  # dS = P * (dP - delta)
        if dq.numel():
            torch.bmm(ds, ops.k[hs], out=dq[hs, rs])
        if dka.numel():  # [dk, dc]: the ones column of qa sums dS over the queries
            dka[hs].baddbmm_(ds.transpose(1, 2), ops.qa[hs, rs])
        grid = ds.view(*ds.shape[:2], t.hk, t.wk)
        if dbx.numel():
            torch.sum(grid, 2, out=dbx[hs, rs])
        if dby.numel():
            torch.sum(grid, 3, out=dby[hs, rs])

    _run(plan, work, dev.type)
    return dq, dka, dv, dbx, dby


@_backward_op.register_fake
def _(grad, out, value, query, key, key_bias, bias_x, bias_y, window_x, window_y, hq, wq, hk, wk, elements,
      needs):
    nh, nq, nk = out.shape[0], hq * wq, hk * wk
    need = dict(zip(_GRADS, needs))
    width = (0 if query is None else query.shape[-1]) + (key_bias is not None)

    def empty(cond, *shape):
        return out.new_empty(shape if cond else (0,))

    return (empty(query is not None and need["query"], nh, nq, 0 if query is None else query.shape[-1]),
            empty(width > 0 and (need["key"] or need["key_bias"]), nh, nk, width),
            empty(need["value"], nh, nk, value.shape[-1]),
            empty(bias_x is not None and need["bias_x"], nh, nq, wk),
            empty(bias_y is not None and need["bias_y"], nh, nq, hk))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], output)
    ctx.sizes = inputs[8:]  # hq, wq, hk, wk, elements


def _backward(ctx, grad):
    value, query, key, key_bias, bias_x, bias_y, window_x, window_y, out = ctx.saved_tensors
    inputs = (query, key, value, key_bias, bias_x, bias_y)
    needs = [x is not None and ctx.needs_input_grad[i] for i, x in zip((1, 2, 0, 3, 4, 5), inputs)]
    dq, dka, dv, dbx, dby = _backward_op(grad, out, value, query, key, key_bias, bias_x, bias_y, window_x,
                                         window_y, *ctx.sizes, needs)
    d = 0 if query is None else query.shape[-1]
    dk = dka[..., :d] if needs[1] else None
    dc = dka[..., -1] if needs[3] else None

    def cast(g, ref, need):
        return g.view(ref.shape).to(ref.dtype) if need else None

    grads = [cast(g, x, n) for g, x, n in zip((dq, dk, dv, dc, dbx, dby), inputs, needs)]
    dq, dk, dv, dc, dbx, dby = grads
    return dv, dq, dk, dc, dbx, dby, None, None, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def chunked_attention(t: Terms, elements: int | None = None) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` computed block by block with a recomputing backward.

    ``elements``: scores per block (default ``BLOCK_ELEMENTS``); any value gives the same result.
    """
    out = _forward_op(t.value, t.query, t.key, t.key_bias, t.full_bias_x(), t.full_bias_y(), t.window_x,
                      t.window_y, t.hq, t.wq, t.hk, t.wk, elements or 0)
    return out.view(t.batch, t.heads, t.nq, t.value.shape[-1]).to(t.value.dtype)
