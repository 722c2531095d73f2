"""Image pre-processing owned by the detector: MMDetection's keep-ratio resize, normalisation and padding.

Plays the role of torchvision's ``GeneralizedRCNNTransform`` but with MMDetection's arithmetic: the scale is
``min(max_size / long side, min_size / short side)`` and each side is rounded to nearest
(``int(side * scale + 0.5)``; torchvision recomputes the size from a float scale factor in ``interpolate``), and
boxes are mapped with the per-axis factors actually applied (``new_w / w``, ``new_h / h``), which is what
MMDetection's ``scale_factor`` holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DetectionTransform", "ImageBatch", "resized_size"]

MMDET_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
MMDET_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """MMDetection's ``imrescale`` size: fit the long side in ``max_size`` and the short side in ``min_size``.

    >>> resized_size(480, 640, 800, 1333)
    (800, 1067)
    """
    scale = min(max_size / max(height, width), min_size / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass
class ImageBatch:
    """A padded batch and what is needed to map boxes back.

    Attributes:
        tensors: ``[N, 3, Hp, Wp]`` normalised, zero-padded at the bottom/right to a multiple of ``size_divisor``.
        image_sizes: Per image, ``(h, w)`` after resizing and before padding (MMDetection's ``img_shape``).
        original_sizes: Per image, ``(H, W)`` as given.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def scale_factors(self, i: int) -> tuple[float, float]:
        """``(w_scale, h_scale)`` applied to image ``i`` (resized / original)."""
        (h, w), (oh, ow) = self.image_sizes[i], self.original_sizes[i]
        return w / ow, h / oh


class DetectionTransform(torch.nn.Module):
    """Resize (keep ratio), normalise and pad a list of images; map boxes into and out of the batch.

    Args:
        min_size: Limit of the short side (MMDetection: 800).
        max_size: Limit of the long side (MMDetection: 1333).
        image_mean: Per-channel mean of inputs in [0, 1] (MMDetection's mean / 255).
        image_std: Per-channel std of inputs in [0, 1] (MMDetection's std / 255).
        size_divisor: Padded sizes are multiples of this (32).
    """

    def __init__(
        self,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = MMDET_MEAN,
        image_std: Sequence[float] = MMDET_STD,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        if int(min_size) < 1 or int(max_size) < 1:
            raise ValueError(f"min_size and max_size must be >= 1, got {min_size}, {max_size}")
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.size_divisor = int(size_divisor)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1), False)

    def forward(self, images: Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        """Prepare a batch.

        Args:
            images: ``N`` tensors ``[3, H_i, W_i]``, float RGB in [0, 1].
            targets: Optional per-image dicts with ``'boxes' [K_i, 4]`` xyxy in the given image's pixels (other
                keys are passed through).

        Returns:
            The :class:`ImageBatch` and the targets with boxes in resized-image pixels (copies; inputs untouched).
        """
        if len(images) == 0:
            raise ValueError("images: expected at least one image")
        resized, sizes, originals = [], [], []
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"images[{i}]: expected a [3, H, W] tensor, got {shape}")
            if not img.is_floating_point():
                raise ValueError(f"images[{i}]: expected a float tensor in [0, 1], got {img.dtype}")
            oh, ow = int(img.shape[1]), int(img.shape[2])
            if oh < 1 or ow < 1:
                raise ValueError(f"images[{i}]: empty image of size {oh}x{ow}")
            h, w = resized_size(oh, ow, self.min_size, self.max_size)
            # MMDetection resizes with cv2 INTER_LINEAR: half-pixel centres, no antialiasing when shrinking.
            out = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=False)[0]
            mean = self.image_mean.to(out)
            std = self.image_std.to(out)
            resized.append((out - mean) / std)
            sizes.append((h, w))
            originals.append((oh, ow))
        d = self.size_divisor
        ph = -(-max(s[0] for s in sizes) // d) * d
        pw = -(-max(s[1] for s in sizes) // d) * d
        # Zero padding after normalisation, as MMDetection's Pad (applied after Normalize) does.
        batch = resized[0].new_zeros((len(resized), 3, ph, pw))
        for i, t in enumerate(resized):
            batch[i, :, : t.shape[1], : t.shape[2]] = t
        out_batch = ImageBatch(batch, sizes, originals)
        if targets is None:
            return out_batch, None
        new_targets = []
        for i, t in enumerate(targets):
            t = dict(t)
            w_scale, h_scale = out_batch.scale_factors(i)
            h, w = sizes[i]
            boxes = t["boxes"] * t["boxes"].new_tensor([w_scale, h_scale, w_scale, h_scale])
            # MMDetection's Resize clips the scaled ground truth to the resized image.
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            t["boxes"] = boxes
            new_targets.append(t)
        return out_batch, new_targets

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}, size_divisor={self.size_divisor}"
