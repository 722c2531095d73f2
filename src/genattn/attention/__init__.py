"""Generalized spatial attention (Zhu et al. 2019) with exact, memory-lean computation paths."""

from genattn.attention.module import GeneralizedAttention

__all__ = ["GeneralizedAttention"]
