"""The settings of a GeneralizedAttention module as one typed record."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from genattn import settings
from genattn.attention import paths

__all__ = ["AttentionConfig", "SEED_ATTENTION", "check_int"]


def _is_int(value) -> bool:
    """An integer or an integral float (``2.0``), not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int (integral floats accepted, as mmcv runs ``kv_stride=1.0``), at least ``minimum``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AttentionConfig:
    """Every :class:`~genattn.attention.GeneralizedAttention` argument but ``in_channels`` (set per block).

    Names and defaults are mmcv's (``num_heads=9``, ``kv_stride=2``, ...); :data:`SEED_ATTENTION` holds the
    seed models' settings. ``impl`` is genattn's choice of computation path (``paths.IMPLS``); every path gives
    the same result. The module docstring of :mod:`genattn.attention.module` says which argument sets are
    accepted and why; the checks are made here (the module builds this record from its arguments). Values are
    normalised: integral floats become ints, any negative ``spatial_range`` -1, any non-positive
    ``position_embedding_dim`` -1 (meaning ``in_channels``).

    Raises:
        ValueError: an argument outside what the module computes correctly (its name in the message), or a
            path that cannot compute this configuration.
    """

    spatial_range: int = -1
    num_heads: int = 9
    position_embedding_dim: int = -1
    position_magnitude: float = 1.0
    kv_stride: int = 2
    q_stride: int = 1
    attention_type: str = "1111"
    impl: str = "auto"

    def __post_init__(self) -> None:
        def keep(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("num_heads", "kv_stride", "q_stride"):
            keep(name, check_int(name, getattr(self, name), 1))
        value = self.spatial_range
        if not (_is_real(value) and value < 0) and not _is_int(value):
            raise ValueError(f"spatial_range must be an integer (any negative number for none), got {value!r}")
        keep("spatial_range", -1 if value < 0 else int(value))
        value = self.position_embedding_dim
        if not (_is_real(value) and value <= 0) and not _is_int(value):
            raise ValueError(f"position_embedding_dim must be an integer (<= 0 for in_channels), got {value!r}")
        keep("position_embedding_dim", -1 if value <= 0 else int(value))
        value = self.position_magnitude
        if not _is_real(value) or not math.isfinite(value):
            raise ValueError(f"position_magnitude must be a finite number, got {value!r}")
        keep("position_magnitude", float(value))
        t = self.attention_type
        if not isinstance(t, str) or len(t) != 4 or set(t) - {"0", "1"}:
            raise ValueError(f"attention_type must be a string of four '0'/'1' characters, got {t!r}")
        paths.check_impl(self.impl, self.attention_type, self.spatial_range)

    def kwargs(self) -> dict[str, Any]:
        """The module's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def build(self, in_channels: int):
        """A ``GeneralizedAttention(in_channels, **self.kwargs())``."""
        from genattn.attention.module import GeneralizedAttention

        return GeneralizedAttention(in_channels, **self.kwargs())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "attention_cfg") -> "AttentionConfig":
        """From a mapping of arguments; an unknown key is an error that lists the valid ones."""
        return settings.from_dict(cls, data, where)


SEED_ATTENTION = AttentionConfig(spatial_range=-1, num_heads=8, attention_type="1111", kv_stride=2)
"""What the seed's models use (MMDetection's ``empirical_attention`` configs); their attention type varies."""
