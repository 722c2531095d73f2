"""Computation paths of the attention core and the automatic choice between them.

Every path maps the decomposed terms (``genattn.attention.terms.Terms``) to the attention output
``[N, h, Nq, dv]`` (``[N, h, 1, dv]`` for ``key_only``) and gives the same result up to rounding.

``'auto'`` picks ``key_only`` for '0010' without a window, ``separable`` for '0001' and FlexAttention on CUDA
with Triton. Elsewhere (CPU): ``chunked`` when gradients are needed, the position terms or a window widen
sdpa's vectors and the map is large (at least ``CHUNKED_MIN_PAIRS`` query-key pairs per image and head), and
``sdpa`` otherwise (the numbers behind this are in ``choose`` and the README's benchmark table). An empty batch
takes ``materialize``, which handles it trivially.
"""

from __future__ import annotations

from torch import Tensor

from genattn.attention.paths.chunked import chunked_attention
from genattn.attention.paths.factorized import key_only_attention, separable_attention
from genattn.attention.paths.flex import flex_attention_path, flex_available
from genattn.attention.paths.materialize import materialize_attention
from genattn.attention.paths.sdpa import sdpa_attention
from genattn.attention.terms import Terms

# Query-key pairs per image and head from which auto prefers chunked over sdpa in CPU training (see choose).
CHUNKED_MIN_PAIRS = 1 << 20

IMPLS = ("auto", "materialize", "chunked", "sdpa", "flex", "key_only", "separable")

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
    if impl == "key_only" and (attention_type != "0010" or spatial_range >= 0):
        raise ValueError(f"impl='key_only' needs attention_type '0010' without spatial_range, got "
                         f"attention_type={attention_type!r}, spatial_range={spatial_range}")
    if impl == "separable" and attention_type != "0001":
        raise ValueError(f"impl='separable' needs attention_type '0001', got {attention_type!r}")


def applicable(attention_type: str, spatial_range: int, device_type: str = "cpu") -> list[str]:
    """The paths (other than 'auto') that can compute this configuration on this device type."""
    names = ["materialize", "chunked", "sdpa"]
    if device_type == "cuda":
        names.append("flex")
    if attention_type == "0010" and spatial_range < 0:
        names.append("key_only")
    if attention_type == "0001":
        names.append("separable")
    return names


def choose(impl: str, attention_type: str, spatial_range: int, t: Terms) -> str:
    """The path to run: ``impl`` itself unless it is ``'auto'`` (which looks at whether gradients are needed)."""
    if impl != "auto":
        return impl
    if t.batch == 0:
        return "materialize"
    if attention_type == "0010" and spatial_range < 0:
        return "key_only"
    if attention_type == "0001":
        return "separable"
    if flex_available(t.value.device):
        return "flex"
    # sdpa widens queries/keys by wk + hk one-hot columns for the position terms or a window; its backward then
    # costs ~3x the plain d-wide one, and on large maps the chunked path's custom backward wins in training. On
    # small maps chunked's per-block op overhead dominates and sdpa wins (quiet 2-core EPYC, '1111' f+b: stage 3,
    # 4200 x 1050 pairs, chunked 1116 ms vs sdpa 1282 ms; stage 4, 1050 x 263 pairs, 266 ms vs 192 ms).
    widened = t.bias_x is not None or t.window_x is not None
    if widened and t.value.requires_grad and t.nq * t.nk >= CHUNKED_MIN_PAIRS:
        return "chunked"
    return "sdpa"


def run(name: str, t: Terms) -> Tensor:
    """Run path ``name`` on ``t``."""
    return _RUN[name](t)
