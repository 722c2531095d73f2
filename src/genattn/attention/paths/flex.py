"""FlexAttention: the fused, compiled kernel with the decomposed energy as a ``score_mod``.

``score(q, k) = q.k + c[k] + bias_x[q, kx] + bias_y[q, ky]``; the spatial window is a ``mask_mod`` turned into
a block mask, so blocks outside every window are skipped. Gradients reach the captured ``c``/``bias_x``/
``bias_y`` through FlexAttention's support for captured tensors. Its kernels need head widths of at least
``FLEX_MIN_DIM`` (``tl.dot`` on CUDA), while a head is ``in_channels // num_heads`` wide (1 for 16 channels and
mmcv's default 9 heads): narrower queries, keys and values are zero-padded, which adds nothing to ``q.k`` and
only zero columns (cut off) to the output.

Where it runs:

* CUDA (with Triton): the compiled kernel, forward and backward, compiled with dynamic shapes (detection
  inputs change size from batch to batch; one compilation per configuration serves every size).
* CPU without gradients: the compiled kernel of inductor's C++ backend, with static shapes (one compilation
  per shape): with dynamic shapes torch 2.14's CPU kernel gave wrong values or NaN once ``bias_x``/``bias_y``
  were captured, and failed to compile with a window.
* CPU with gradients (FlexAttention has no CPU backward): the same ``score_mod``/``mask_mod`` evaluated on the
  dense ``[N, h, Nq, Nk]`` score grid, which materialises like ``'materialize'``. This is how CI checks the
  logic CUDA users run, gradients included, against the float64 oracle; ``'auto'`` never picks flex on a CPU.
* Inside a graph the caller compiles (``torch.compile`` of the module or the model): FlexAttention is traced
  into that graph and compiled with it; on a CPU, a graph with symbolic (dynamic) sizes evaluates the mods on
  the dense grid instead, for the reason above.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from genattn.attention.terms import Terms

# Smallest query/key and value width FlexAttention's CUDA kernel accepts.
FLEX_MIN_DIM = 16
# torch.compile keeps this many compiled variants of flex_attention (configurations x dtypes x grad modes,
# and shapes on CPU) before it silently runs the unfused eager version; dynamo's default of 8 is reached by a
# benchmark or test run of every attention type.
RECOMPILE_LIMIT = 64


@functools.cache
def _compiled_flex(dynamic: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=dynamic)


def flex_available(device: torch.device) -> bool:
    """Whether FlexAttention's fused kernel can run on this device: CUDA needs Triton; CPU compiles C++."""
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def _mods(t: Terms):
    """``(score_mod, mask_mod)`` of the decomposed energy; ``mask_mod`` is None without a window.

    Both take FlexAttention's index arguments ``(b, head, q_idx, kv_idx)``; being plain indexing and
    arithmetic, they also accept broadcastable index tensors (the dense CPU evaluation uses that).
    """
    wq, wk = t.wq, t.wk
    c, bx, by = t.key_bias, t.full_bias_x(), t.full_bias_y()

    def score_mod(score, b, head, qi, kj):
        if c is not None:
            score = score + c[b, head, kj]
        if bx is not None:
            score = score + bx[b, head, qi, kj % wk]
        if by is not None:
            score = score + by[b, head, qi, kj // wk]
        return score

    if t.window_x is None:
        return score_mod, None
    win_x, win_y = t.window_x, t.window_y

    def mask_mod(b, head, qi, kj):
        return win_y[qi // wq, kj // wk] & win_x[qi % wq, kj % wk]

    return score_mod, mask_mod


def _dense(q: Tensor, k: Tensor, v: Tensor, score_mod, mask_mod) -> Tensor:
    """FlexAttention's definition evaluated on the whole score grid (differentiable, any device)."""
    n, h, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    dev = q.device
    b = torch.arange(n, device=dev).view(n, 1, 1, 1)
    head = torch.arange(h, device=dev).view(1, h, 1, 1)
    qi = torch.arange(nq, device=dev).view(1, 1, nq, 1)
    kj = torch.arange(nk, device=dev).view(1, 1, 1, nk)
    acc = torch.promote_types(q.dtype, torch.float32)  # FlexAttention accumulates in float32 too
    scores = score_mod(torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)), b, head, qi, kj)
    if mask_mod is not None:
        scores = scores.masked_fill(~mask_mod(b, head, qi, kj), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(acc)).to(v.dtype)


def flex_attention_path(t: Terms) -> Tensor:
    """Attention output ``[N, h, Nq, dv]`` through FlexAttention (see the module docstring for where)."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask

    dev = t.value.device
    if not flex_available(dev):
        raise ValueError(f"impl='flex' needs a CPU, or a CUDA device with Triton; got device {dev}")
    n, h = t.batch, t.heads
    dtype = t.value.dtype
    if torch.is_autocast_enabled(dev.type):
        dtype = torch.get_autocast_dtype(dev.type)
    dv = t.value.shape[-1]
    if n == 0:
        return t.value.new_zeros((0, h, t.nq, dv), dtype=dtype)
    if t.query is not None:
        q, k = t.query.to(dtype), t.key.to(dtype)
    else:  # no content term: q.k = 0, the score is the score_mod alone
        q = t.value.new_zeros((n, h, t.nq, FLEX_MIN_DIM), dtype=dtype)
        k = t.value.new_zeros((n, h, t.nk, FLEX_MIN_DIM), dtype=dtype)
    if q.shape[-1] < FLEX_MIN_DIM:  # zero columns add nothing to q.k
        q, k = (F.pad(a, (0, FLEX_MIN_DIM - a.shape[-1])) for a in (q, k))
    v = F.pad(t.value.to(dtype), (0, max(0, FLEX_MIN_DIM - dv)))
    score_mod, mask_mod = _mods(t)
    grads = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (t.value, t.query, t.key, t.key_bias, t.bias_x, t.bias_y))
    # Inside a graph compiled with dynamic shapes the map sizes are symbolic, and torch 2.14's CPU kernel does
    # not compile with them (see the module docstring): such a graph evaluates the mods on the dense grid too.
    symbolic = any(isinstance(s, torch.SymInt) for s in (n, t.hq, t.wq, t.hk, t.wk))
    if dev.type == "cpu" and (grads or symbolic):
        return _dense(q, k, v, score_mod, mask_mod)[..., :dv]
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, t.nq, t.nk, device=dev)
    if torch.compiler.is_compiling():  # inside the caller's graph, which compiles FlexAttention with it
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)[..., :dv]
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.7
    with torch._dynamo.config.patch(**{limit: RECOMPILE_LIMIT}):
        out = _compiled_flex(dev.type == "cuda")(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out[..., :dv]
