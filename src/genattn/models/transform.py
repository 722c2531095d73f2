"""Image pre-processing owned by the detector: MMDetection's keep-ratio resize, normalisation and padding.

Plays the role of torchvision's ``GeneralizedRCNNTransform`` but with MMDetection's arithmetic: the scale is
``min(max_size / long side, min_size / short side)`` and each side is rounded to nearest
(``int(side * scale + 0.5)``; torchvision recomputes the size from a float scale factor in ``interpolate``), and
boxes are mapped with the per-axis factors actually applied (``new_w / w``, ``new_h / h``), which is what
MMDetection's ``scale_factor`` holds.

uint8 images (as decoded from a file) get MMDetection's pixels exactly: OpenCV's fixed-point bilinear resize
(:func:`~genattn.models.resize.resize_linear_uint8`) and ``mmcv.imnormalize``'s float32 arithmetic. Float images
in [0, 1] are resized in float (``F.interpolate``, the same sampling without the fixed-point rounding): close to
MMDetection's input, not identical.

In training a target may ask for a horizontal flip (``'flip': True``, decided by the dataset): the image is
flipped after it is resized and its boxes in resized-image pixels, MMDetection's order (Resize, RandomFlip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genattn.models.resize import resize_linear_uint8

__all__ = ["DetectionTransform", "ImageBatch", "resized_size", "padded_size", "MMDET_MEAN", "MMDET_STD"]

#: MMDetection's ``img_norm_cfg`` (RGB order, pixel values 0..255).
MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """MMDetection's ``imrescale`` size: fit the long side in ``max_size`` and the short side in ``min_size``.

    >>> resized_size(480, 640, 800, 1333)
    (800, 1067)
    """
    # torch.sym_* are min, max and int on Python numbers and keep symbolic sizes symbolic in torch.export (where
    # the arithmetic stays float64: see genattn.models.export).
    scale = torch.sym_min(max_size / torch.sym_max(height, width), min_size / torch.sym_min(height, width))
    return torch.sym_int(height * scale + 0.5), torch.sym_int(width * scale + 0.5)


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    """A size rounded up to multiples of ``size_divisor`` (MMDetection's ``Pad``; a batch pads to the largest).

    >>> padded_size(800, 1067, 32)
    (800, 1088)
    """
    # (x + d - 1) // d, not -(-x // d): the same on integers, and exact for symbolic sizes in an export
    d = size_divisor
    return (height + d - 1) // d * d, (width + d - 1) // d * d


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

    def scale_factors(self, i: int) -> Tensor:
        """float64 ``[w_scale, h_scale]`` applied to image ``i`` (resized / original; a tensor so that it follows
        symbolic sizes in an exported graph)."""
        (h, w), (oh, ow) = self.image_sizes[i], self.original_sizes[i]
        h, w, oh, ow = (torch.scalar_tensor(v, dtype=torch.float64) for v in (h, w, oh, ow))
        return torch.stack([w / ow, h / oh])


class DetectionTransform(torch.nn.Module):
    """Resize (keep ratio), normalise and pad a list of images; map boxes into and out of the batch.

    Args:
        min_size: Limit of the short side (MMDetection: 800).
        max_size: Limit of the long side (MMDetection: 1333).
        image_mean: Per-channel (RGB) mean in pixel values 0..255, as MMDetection's ``img_norm_cfg`` (float images
            in [0, 1] are normalised with ``mean / 255``).
        image_std: Per-channel std in pixel values 0..255 (float images: ``std / 255``).
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
        mean = torch.tensor(image_mean, dtype=torch.float64)
        std = torch.tensor(image_std, dtype=torch.float64)
        if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all():
            raise ValueError(f"image_mean and image_std: expected 3 values each and std > 0, got {image_mean}, "
                             f"{image_std}")
        # MMDetection's Normalize holds mean and std as float32; mmcv.imnormalize subtracts the mean in float32
        # (cv2.subtract), then multiplies by 1 / std computed in float64 and rounds the product to float32
        # (cv2.multiply). A uint8 value has one result per channel, so all 256 are tabulated.
        centred = torch.arange(256, dtype=torch.float32) - mean.float()[:, None]
        inv_std = 1 / std.float().double()
        self.register_buffer("pixel_table", (centred.double() * inv_std[:, None]).float(), False)  # [3, 256]
        # Float images in [0, 1]: (x - mean / 255) / (std / 255) in the image's dtype.
        self.register_buffer("float_mean", (mean / 255).float().view(3, 1, 1), False)
        self.register_buffer("float_std", (std / 255).float().view(3, 1, 1), False)

    # Under torch.compile the pre-processing runs eagerly: its integer resize arithmetic on each input's size
    # would otherwise specialise the compiled graph on every new image size (a recompile per size).
    @torch.compiler.disable
    def forward(self, images: Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        """Prepare a batch.

        Args:
            images: ``N`` tensors ``[3, H_i, W_i]``, RGB, uint8 (MMDetection's pixels exactly) or float in [0, 1]
                (float resize: close to MMDetection's, not identical).
            targets: Optional per-image dicts with ``'boxes' [K_i, 4]`` xyxy in the given image's pixels and
                optionally ``'flip'``: when True, the resized image and its boxes are flipped left-right (other
                keys are passed through).

        Returns:
            The :class:`ImageBatch` and the targets with boxes in resized-image pixels (copies; inputs untouched).
        """
        if len(images) == 0:
            raise ValueError("images: expected at least one image")
        resized, sizes, originals = [], [], []
        flips = [bool(t.get("flip", False)) for t in targets] if targets is not None else [False] * len(images)
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"images[{i}]: expected a [3, H, W] tensor, got {shape}")
            if img.dtype != torch.uint8 and not img.is_floating_point():
                raise ValueError(f"images[{i}]: expected uint8 or float in [0, 1], got {img.dtype}")
            oh, ow = img.shape[1], img.shape[2]  # no int(): symbolic sizes in torch.export
            if oh < 1 or ow < 1:
                raise ValueError(f"images[{i}]: empty image of size {oh}x{ow}")
            h, w = resized_size(oh, ow, self.min_size, self.max_size)
            if img.dtype == torch.uint8:
                out = resize_linear_uint8(img, (h, w))
                resized.append(self.pixel_table.gather(1, out.reshape(3, -1).long()).view(3, h, w))
            else:
                # cv2 INTER_LINEAR's sampling: half-pixel centres, no antialiasing when shrinking.
                out = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=False)[0]
                # In the model's dtype (the tables'), so a bfloat16 or half model takes float images too.
                out = (out - self.float_mean.to(out)) / self.float_std.to(out)
                resized.append(out.to(self.pixel_table.dtype))
            if flips[i]:
                resized[-1] = resized[-1].flip(-1)
            sizes.append((h, w))
            originals.append((oh, ow))
        ph, pw = padded_size(max(s[0] for s in sizes), max(s[1] for s in sizes), self.size_divisor)
        # Zero padding after normalisation, as MMDetection's Pad (applied after Normalize) does.
        batch = torch.stack([F.pad(t, (0, pw - t.shape[2], 0, ph - t.shape[1])) for t in resized])
        out_batch = ImageBatch(batch, sizes, originals)
        if targets is None:
            return out_batch, None
        new_targets = []
        for i, t in enumerate(targets):
            t = dict(t)
            h, w = sizes[i]
            boxes = t["boxes"] * out_batch.scale_factors(i).to(t["boxes"]).repeat(2)
            # MMDetection's Resize clips the scaled ground truth to the resized image.
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            if flips[i]:  # MMDetection's bbox_flip in the resized image: x1' = w - x2, x2' = w - x1
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            t["boxes"] = boxes
            new_targets.append(t)
        return out_batch, new_targets

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}, size_divisor={self.size_divisor}"
