"""The dataset-side part of MMDetection's pipeline: decode, flip.

Resizing, normalisation and padding belong to the model (torchvision convention), so the dataset hands out
decoded uint8 images at their stored size (the model then resizes them with MMDetection's exact integer
arithmetic); the only training augmentation of the 1x recipe is the horizontal flip.
"""

from __future__ import annotations

import os

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

__all__ = ["load_image", "hflip"]


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as RGB.

    Args:
        path: image file (any format PIL reads).

    Returns:
        uint8 tensor [3, H, W], the decoded pixels.

    Raises:
        ValueError: the file is missing or cannot be decoded (one line naming the file and the reason).
    """
    try:
        with Image.open(path) as img:
            # convert() forces the full decode here, so a truncated file fails now and not later.
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"image {path}: cannot decode ({reason})") from None
    return pil_to_tensor(rgb).contiguous()  # pil_to_tensor gives a channels-last view


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip an image and its boxes left-right.

    Boxes follow MMDetection's flip for widths without "+1": ``x1' = W - x2``, ``x2' = W - x1``.

    Args:
        image: [C, H, W].
        boxes: [K, 4] xyxy in pixels of ``image``.

    Returns:
        The flipped image [C, H, W] and boxes [K, 4].
    """
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped
