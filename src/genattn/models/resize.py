"""OpenCV's bilinear resize of uint8 images, ``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)``, bit-exact.

MMDetection resizes the decoded uint8 image with OpenCV, whose 8-bit bilinear path is fixed-point integer
arithmetic: a float resize rounded to uint8 leaves about 10 % of the values one grey level off. This module
reproduces the integer arithmetic with vectorised torch ops. The rule, worked out from the arithmetic and checked
value for value against ``cv2.resize`` of the x86-64 wheels of OpenCV 4.5.5, 4.8.1, 4.14.0 and 5.0.0:

* Coordinates, per axis: ``scale = 1 / (dst / src)`` in double; output index ``d`` reads the source at
  ``f = float32((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, fraction ``f - s`` in float32. The weights are 11-bit
  fixed point: ``w0 = round((1 - f) * 2048)``, ``w1 = round(f * 2048)`` (float32 products, half to even).
* Horizontal pass, exact: ``h = src[s] * w0 + src[s + 1] * w1``. At the left and right borders the column is
  clamped *together with its weight*: ``s < 0`` gives ``s = 0, f = 0``, ``s >= W - 1`` gives ``s = W - 1, f = 0``.
* Vertical pass: rows ``s`` and ``s + 1`` are clamped to ``[0, H - 1]`` but *the weights are kept*, so at the top
  and bottom borders one row is combined with itself under weights other than (2048, 0). Each row is pre-shifted,
  multiplied and floored on its own, then one rounding shift:
  ``(((w0 * (h0 >> 4)) >> 16) + ((w1 * (h1 >> 4)) >> 16) + 2) >> 2``: the form of OpenCV's SIMD kernel, which in
  the wheels tested gives every value, row ends included (OpenCV's exactly rounded scalar form,
  ``(h0 * w0 + h1 * w1 + 2**21) >> 22``, differs on about 11 % of the values).

Treating the border rows like the columns leaves 0.4 % of the values off by one, and a float64 coordinate 0.15 %
(on random sizes from 1 to 1400 pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["resize_linear_uint8"]

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def _taps(src: int, dst: int, clamp_weights: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and fixed-point weights of one axis: ``(idx0, idx1, w0, w1)``, each ``[dst]``.

    ``src`` and ``dst`` may be symbolic sizes (``torch.export``): the float64 arithmetic is done on 0-d tensors,
    which is the same IEEE arithmetic as Python floats and stays float64 in an exported graph.
    """
    # OpenCV inverts the size ratio, which can differ from src / dst in the last bit.
    # Computed on the CPU: the coordinate needs float64, which not every device has.
    scale = 1.0 / (torch.scalar_tensor(dst, dtype=torch.float64) / torch.scalar_tensor(src, dtype=torch.float64))
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    s = f.floor()
    f = f - s
    s = s.long()
    if clamp_weights:
        outside = (s < 0) | (s >= src - 1)
        f = f.masked_fill(outside, 0.0)
    w0 = ((1 - f) * _COEF_SCALE).round().int()  # torch.round: half to even, as OpenCV's cvRound
    w1 = (f * _COEF_SCALE).round().int()
    taps = (s.clamp(0, src - 1), (s + 1).clamp(0, src - 1), w0, w1)
    return tuple(t.to(device) for t in taps)


def resize_linear_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize like ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` on a uint8 image, bit for bit.

    Args:
        image: uint8 ``[..., H, W]`` (e.g. ``[3, H, W]`` as ``torchvision.io.read_image`` gives; every leading
            index is resized on its own, as OpenCV does with channels).
        size: ``(h, w)`` of the output, each >= 1.

    Returns:
        uint8 ``[..., h, w]`` on ``image``'s device.
    """
    if image.dtype != torch.uint8:
        raise ValueError(f"image: expected a uint8 tensor, got {image.dtype}")
    if image.dim() < 2 or image.shape[-2] < 1 or image.shape[-1] < 1:
        raise ValueError(f"image: expected [..., H, W] with H, W >= 1, got {tuple(image.shape)}")
    # Sizes are not converted with int(): in torch.export they are symbolic and must stay so.
    dh, dw = size
    if dh < 1 or dw < 1:
        raise ValueError(f"size: expected positive (h, w), got {tuple(size)}")
    sh, sw = image.shape[-2], image.shape[-1]
    # No shortcut for an unchanged size (OpenCV copies): the arithmetic gives the same pixels, and a branch on
    # the size would fix it in an exported graph.
    y0, y1, b0, b1 = _taps(sh, dh, clamp_weights=False, device=image.device)
    x0, x1, a0, a1 = _taps(sw, dw, clamp_weights=True, device=image.device)
    src = image
    if not (isinstance(dh, int) and isinstance(sh, int)) or 2 * dh < sh:
        # Shrinking: only 2 * dh source rows are read; take them before the horizontal pass. With symbolic sizes
        # (torch.export, torch.compile) always, as a branch on the size would fix it in the graph: the result is
        # the same, enlarging just computes some rows twice.
        src = src.index_select(-2, torch.cat([y0, y1]))
        y0 = torch.arange(dh, device=image.device)
        y1 = y0 + dh
    # Horizontal pass, pre-shifted for the vertical one: (src[x0] * a0 + src[x1] * a1) >> 4, at most 32640.
    rows = src.index_select(-1, x0).int().mul_(a0)
    rows.add_(src.index_select(-1, x1).int().mul_(a1)).bitwise_right_shift_(4)  # [..., R, dw]
    # Vertical pass; int32 suffices: 32640 * 2048 < 2**26.
    out = rows.index_select(-2, y0).mul_(b0[:, None]).bitwise_right_shift_(16)
    out.add_(rows.index_select(-2, y1).mul_(b1[:, None]).bitwise_right_shift_(16))
    # At most (1020 + 2) >> 2 = 255: no saturation needed before the cast.
    return out.add_(2).bitwise_right_shift_(2).to(torch.uint8)
