"""Computation paths of the attention core and the automatic choice between them.

Every path maps the decomposed terms (``genattn.attention.terms.Terms``) to the attention output
``[N, h, Nq, dv]`` (``[N, h, 1, dv]`` for ``key_only``) and gives the same result up to rounding.

``'auto'`` picks ``key_only`` for '0010' (and '0000') without a window, ``separable`` for '0001' and
FlexAttention on CUDA with Triton (sdpa without). On a CPU: ``chunked`` when the position terms or a window
widen sdpa's vectors and the map is large (at least ``CHUNKED_MIN_PAIRS`` query-key pairs per image and head),
``sdpa`` otherwise (the numbers behind this are in ``candidates`` and the README's benchmark table). An empty
batch takes ``materialize``, which handles it trivially.

Off the CPU (where CI runs every path) ``'auto'`` runs its choice through ``guard.run_guarded`` with ``sdpa``
and ``chunked`` behind it: a path that fails there, or gives a result that differs from ``chunked``'s, is
dropped for that configuration with one warning. Under ``torch.compile`` every choice is made at trace time
and nothing is tried or timed: the graph holds the first candidate not dropped by earlier eager calls. The environment variable ``GENATTN_ATTENTION_IMPL`` (a path
name) replaces ``'auto'`` in every module whose ``impl`` is ``'auto'``; a path set either way is forced: it is
run as it is, without fallback.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from genattn.attention.paths import guard
from genattn.attention.paths.chunked import chunked_attention
from genattn.attention.paths.factorized import key_only_attention, separable_attention
from genattn.attention.paths.flex import flex_attention_path, flex_available
from genattn.attention.paths.materialize import materialize_attention
from genattn.attention.paths.sdpa import sdpa_attention
from genattn.attention.terms import Terms

# Query-key pairs per image and head from which auto prefers chunked over sdpa on a CPU (see candidates).
CHUNKED_MIN_PAIRS = 1 << 19

ENV_VAR = "GENATTN_ATTENTION_IMPL"
IMPLS = ("auto", "materialize", "chunked", "sdpa", "flex", "key_only", "separable")
# Types whose energy does not depend on the query ('0010': u.k; '0000': 0): one context vector per image.
KEY_ONLY_TYPES = ("0010", "0000")

_RUN = {
    "materialize": materialize_attention,
    "chunked": chunked_attention,
    "sdpa": sdpa_attention,
    "flex": flex_attention_path,
    "key_only": key_only_attention,
    "separable": separable_attention,
}


def check_impl(impl: str, attention_type: str, spatial_range: int) -> None:
    """Raise ValueError when ``impl`` is unknown or cannot compute this configuration."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "key_only" and (attention_type not in KEY_ONLY_TYPES or spatial_range >= 0):
        raise ValueError(f"impl='key_only' needs attention_type '0010' or '0000' without spatial_range, got "
                         f"attention_type={attention_type!r}, spatial_range={spatial_range}")
    if impl == "separable" and attention_type != "0001":
        raise ValueError(f"impl='separable' needs attention_type '0001', got {attention_type!r}")


def resolve(impl: str, attention_type: str, spatial_range: int) -> str:
    """``impl``, or for ``'auto'`` the path that ``GENATTN_ATTENTION_IMPL`` forces (if set).

    Raises:
        ValueError: the variable names no path, or one that cannot compute this configuration.
    """
    forced = os.environ.get(ENV_VAR, "").strip()
    if impl != "auto" or not forced:
        return impl
    try:
        check_impl(forced, attention_type, spatial_range)
    except ValueError as err:
        raise ValueError(f"environment variable {ENV_VAR}={forced!r}: {err}") from None
    return forced


def applicable(attention_type: str, spatial_range: int, device_type: str = "cpu") -> list[str]:
    """The paths (other than 'auto') that can compute this configuration on this device type.

    'flex' is listed for CPU too, where it runs for tests (see ``paths.flex``); 'auto' never picks it there.
    """
    names = ["materialize", "chunked", "sdpa", "flex"]
    if attention_type in KEY_ONLY_TYPES and spatial_range < 0:
        names.append("key_only")
    if attention_type == "0001":
        names.append("separable")
    return names


def candidates(attention_type: str, spatial_range: int, t: Terms) -> list[str]:
    """What ``'auto'`` runs: its choice, then (off the CPU) the fallbacks ``sdpa`` and ``chunked``."""
    if t.batch == 0:
        return ["materialize"]
    if attention_type in KEY_ONLY_TYPES and spatial_range < 0:
        first = "key_only"
    elif attention_type == "0001":
        first = "separable"
    elif t.value.device.type != "cpu":  # the fused kernels (the chunked/sdpa timings below are a CPU's)
        first = "flex" if flex_available(t.value.device) else "sdpa"
    else:
        # sdpa widens queries/keys by wk + hk one-hot columns (and values to the same width) for the position
        # terms or a window, which triples its matmuls; chunked keeps them d wide but pays per-block op
        # overhead, which small maps do not amortise. '1111', 256 channels, 8 heads, batch 2, kv_stride 2, 2
        # threads of a quiet 2-core EPYC, forward / forward+backward ms, sdpa vs chunked: 0.29M pairs (25x42)
        # 36/112 vs 42/117; 0.80M (32x56) 77/261 vs 73/209; 1.64M (40x64) 153/497 vs 104/307; 4.41M (50x84)
        # 368/1165 vs 282/744.
        widened = t.bias_x is not None or t.window_x is not None
        first = "chunked" if widened and t.nq * t.nk >= CHUNKED_MIN_PAIRS else "sdpa"
    if t.value.device.type == "cpu":
        return [first]
    return list(dict.fromkeys([first, "sdpa", "chunked"]))


def choose(impl: str, attention_type: str, spatial_range: int, t: Terms) -> str:
    """The path a call runs first: ``impl`` (or the forced one) unless ``'auto'``, else ``'auto'``'s choice
    among the paths not dropped for this configuration (see ``guard``)."""
    impl = resolve(impl, attention_type, spatial_range)
    if impl != "auto":
        return impl
    names = candidates(attention_type, spatial_range, t)
    dropped = guard.dropped(t)
    return next((n for n in names if n not in dropped), names[-1])


def attend(impl: str, attention_type: str, spatial_range: int, t: Terms) -> Tensor:
    """The attention output ``[N, h, Nq, dv]`` of ``t`` by ``impl`` (``'auto'``: guarded off the CPU)."""
    impl = resolve(impl, attention_type, spatial_range)
    if impl != "auto":
        return run(impl, t)
    names = candidates(attention_type, spatial_range, t)
    if len(names) == 1:
        return run(names[0], t)
    if torch.compiler.is_compiling():
        # A compiled graph cannot try a path and fall back: it runs, decided at trace time, the first candidate
        # that eager calls have not dropped for this configuration (see the README's "Compile").
        dropped = guard.dropped(t)
        return run(next((n for n in names if n not in dropped), names[-1]), t)
    return guard.run_guarded(names, t, run)


def run(name: str, t: Terms) -> Tensor:
    """Run path ``name`` on ``t``."""
    return _RUN[name](t)
