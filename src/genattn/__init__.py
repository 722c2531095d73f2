"""genattn: spatial attention for detection backbones in pure PyTorch + torchvision.

Reimplements the generalized attention module and the Faster R-CNN models of
*An Empirical Study of Spatial Attention Mechanisms in Deep Networks*
(Zhu, Cheng, Zhang, Lin, Dai; arXiv 1904.05873).
"""

from genattn.attention import GeneralizedAttention

__all__ = ["GeneralizedAttention"]
__version__ = "0.1.0"
