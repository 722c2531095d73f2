"""Computation paths of the attention core and the automatic choice between them.

Every path maps the decomposed terms (``genattn.attention.terms.Terms``) to the attention output
``[N, h, Nq, dv]`` (``[N, h, 1, dv]`` for ``key_only``) and gives the same result up to rounding.

``'auto'`` picks ``key_only`` for '0010' (and '0000') without a window, ``separable`` for '0001' and
FlexAttention on CUDA with Triton. Elsewhere (CPU): ``chunked`` when the position terms or a window widen sdpa's
vectors and the map is large (at least ``CHUNKED_MIN_PAIRS`` query-key pairs per image and head), ``sdpa``
otherwise (the numbers behind this are in ``choose`` and the README's benchmark table). An empty batch takes
``materialize``, which handles it trivially.
"""

from __future__ import annotations

from torch import Tensor

from genattn.attention.paths.chunked import chunked_attention
from genattn.attention.paths.factorized import key_only_attention, separable_attention
from genattn.attention.paths.flex import flex_attention_path, flex_available
from genattn.attention.paths.materialize import materialize_attention
from genattn.attention.paths.sdpa import sdpa_attention
from genattn.attention.terms import Terms

# Query-key pairs per image and head from which auto prefers chunked over sdpa (see choose).
CHUNKED_MIN_PAIRS = 1 << 19

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


def applicable(attention_type: str, spatial_range: int, device_type: str = "cpu") -> list[str]:
    """The paths (other than 'auto') that can compute this configuration on this device type."""
    names = ["materialize", "chunked", "sdpa"]
    if device_type == "cuda":
        names.append("flex")
    if attention_type in KEY_ONLY_TYPES and spatial_range < 0:
        names.append("key_only")
    if attention_type == "0001":
        names.append("separable")
    return names


def choose(impl: str, attention_type: str, spatial_range: int, t: Terms) -> str:
    """The path to run: ``impl`` itself unless it is ``'auto'`` (which looks at the terms, device and map size)."""
    if impl != "auto":
        return impl
    if t.batch == 0:
        return "materialize"
    if attention_type in KEY_ONLY_TYPES and spatial_range < 0:
        return "key_only"
    if attention_type == "0001":
        return "separable"
    if flex_available(t.value.device):
        return "flex"
    # sdpa widens queries/keys by wk + hk one-hot columns (and values to the same width) for the position terms
    # or a window, which triples its matmuls; chunked keeps them d wide but pays per-block op overhead, which
    # small maps do not amortise. '1111', 256 channels, 8 heads, batch 2, kv_stride 2, 2 threads of a quiet
    # 2-core EPYC, forward / forward+backward ms, sdpa vs chunked: 0.29M pairs (25x42) 36/112 vs 42/117;
    # 0.80M (32x56) 77/261 vs 73/209; 1.64M (40x64) 153/497 vs 104/307; 4.41M (50x84) 368/1165 vs 282/744.
    widened = t.bias_x is not None or t.window_x is not None
    if widened and t.nq * t.nk >= CHUNKED_MIN_PAIRS:
        return "chunked"
    return "sdpa"


def run(name: str, t: Terms) -> Tensor:
    """Run path ``name`` on ``t``."""
    return _RUN[name](t)
