"""Computation paths of the attention core and the automatic choice between them.

Every path maps the decomposed terms (``genattn.attention.terms.Terms``) to the attention output
``[N, h, Nq, dv]`` (``[N, h, 1, dv]`` for ``key_only``) and gives the same result up to rounding.
"""

from __future__ import annotations

from torch import Tensor

from genattn.attention.paths.materialize import materialize_attention
from genattn.attention.terms import Terms

IMPLS = ("auto", "materialize", "chunked", "sdpa", "flex", "key_only", "separable")


def check_impl(impl: str, attention_type: str, spatial_range: int) -> None:
    """Raise ValueError when ``impl`` is unknown or cannot compute this configuration."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "key_only" and (attention_type != "0010" or spatial_range >= 0):
        raise ValueError(f"impl='key_only' needs attention_type '0010' without spatial_range, got "
                         f"attention_type={attention_type!r}, spatial_range={spatial_range}")
    if impl == "separable" and attention_type != "0001":
        raise ValueError(f"impl='separable' needs attention_type '0001', got {attention_type!r}")


def choose(impl: str, attention_type: str, spatial_range: int, t: Terms, training: bool) -> str:
    """The path to run: ``impl`` itself unless it is ``'auto'``."""
    if impl != "auto":
        return impl
    return "materialize"


def run(name: str, t: Terms) -> Tensor:
    """Run path ``name`` on ``t``."""
    if name == "materialize":
        return materialize_attention(t)
    raise NotImplementedError(f"impl={name!r} is not implemented yet")
