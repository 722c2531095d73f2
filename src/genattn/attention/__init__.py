"""Generalized spatial attention (Zhu et al. 2019) with exact, memory-lean computation paths."""

from genattn.attention.config import SEED_ATTENTION, AttentionConfig
from genattn.attention.module import GeneralizedAttention

__all__ = ["AttentionConfig", "GeneralizedAttention", "SEED_ATTENTION"]
