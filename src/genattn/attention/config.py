"""The settings of a GeneralizedAttention module as one typed record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from genattn import settings
from genattn.attention import paths

__all__ = ["AttentionConfig", "SEED_ATTENTION"]


@dataclass(frozen=True)
class AttentionConfig:
    """Every :class:`~genattn.attention.GeneralizedAttention` argument but ``in_channels`` (set per block).

    Names and defaults are mmcv's (``num_heads=9``, ``kv_stride=2``, ...); :data:`SEED_ATTENTION` holds the
    seed models' settings. ``impl`` is genattn's choice of computation path (``paths.IMPLS``); every path gives
    the same result.

    Raises:
        ValueError: a malformed attention type, or a path that cannot compute this configuration.
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
        t = self.attention_type
        if not isinstance(t, str) or len(t) != 4 or set(t) - {"0", "1"} or t == "0000":
            raise ValueError(f"attention_type must be four '0'/'1' characters, not all '0', got {t!r}")
        for name in ("num_heads", "kv_stride", "q_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
