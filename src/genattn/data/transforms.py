"""The dataset-side part of MMDetection's pipeline: decode (EXIF orientation applied).

Resizing, normalisation and padding belong to the model (torchvision convention), so the dataset hands out
decoded uint8 images at their stored size (the model then resizes them with MMDetection's exact integer
arithmetic); the only training augmentation of the 1x recipe, the horizontal flip, is decided by the dataset
and done by the model after resizing, where MMDetection does it.

Images are decoded as MMDetection decodes them, with OpenCV's ``cv2.imdecode(buf, cv2.IMREAD_COLOR)``: the
pixels of JPEG and PNG files equal OpenCV's (RGB order), and the EXIF orientation tag (phone photos are often
stored sideways with tag 6 or 8) is applied as OpenCV and image viewers apply it. Pillow decodes; OpenCV is only
the tests' oracle. Where Pillow's own conversions differ from OpenCV's (CMYK JPEGs, 16-bit grey PNGs) or where
``PIL.ImageOps.exif_transpose`` reads tags OpenCV ignores (XMP, PNG text chunks), this module follows OpenCV.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

__all__ = ["load_image", "load_stored_image", "image_header", "apply_orientation", "swaps_axes"]

_T = TypeVar("_T")

#: EXIF orientation -> (transpose rows and columns first?, then flip these dims of [C, H, W]).
#: 2 mirror, 3 rotate 180, 4 upside-down mirror, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
#: anticlockwise (the TIFF/EXIF meaning: where the stored first row and column belong).
_ORIENTATIONS = {1: (False, ()), 2: (False, (-1,)), 3: (False, (-2, -1)), 4: (False, (-2,)),
                 5: (True, ()), 6: (True, (-1,)), 7: (True, (-2, -1)), 8: (True, (-2,))}


def _exif_orientation(exif: bytes) -> int:
    """The orientation tag (0x0112) of an EXIF block: a TIFF header and its first directory, optionally after
    ``Exif\\0\\0``. Read as OpenCV reads it (the entry's first 16 bits whatever its declared type); 1 when the
    block is unreadable, the tag missing or its value outside 1..8."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return 1
    magic, ifd = struct.unpack_from(order + "HI", exif, 2)
    if magic != 42 or ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack_from(order + "H", exif, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(exif) - 11), 12):
        tag, value = struct.unpack_from(order + "H6xH", exif, entry)
        if tag == 0x0112:
            return value if value in _ORIENTATIONS else 1
    return 1


def _orientation(img: Image.Image) -> int:
    """EXIF orientation of an opened image, from its EXIF block (JPEG APP1, PNG eXIf, WebP EXIF).

    Not ``Image.getexif()``: it also takes the tag from XMP or PNG text chunks, which OpenCV does not read.
    TIFF files keep the tag outside an EXIF block; recent Pillow versions apply it themselves.
    """
    exif = img.info.get("exif")
    return _exif_orientation(exif) if isinstance(exif, bytes) and exif else 1


def _rgb_tensor(img: Image.Image) -> torch.Tensor:
    """Decoded pixels as uint8 [3, H, W] RGB, converted where Pillow's conversion differs from OpenCV's."""
    if img.mode == "CMYK":
        # Pillow gives the ink amounts (it inverts Adobe JPEGs); OpenCV computes each colour from the stored
        # (inverted) values as k - ((255 - c) * k >> 8), i.e. (255 - K) - (C * (255 - K) >> 8).
        cmyk = np.asarray(img).astype(np.int32)
        white = 255 - cmyk[..., 3:]
        rgb = white - ((cmyk[..., :3] * white) >> 8)
    elif img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        # 16-bit grey (Pillow < 10 opens such PNGs as "I"): OpenCV keeps the high byte; convert("RGB") clips.
        grey = np.asarray(img).astype(np.int64) >> 8
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    else:
        return pil_to_tensor(img.convert("RGB")).contiguous()  # pil_to_tensor gives a channels-last view
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.uint8))


def _read(path: str | os.PathLike, read: Callable[[Image.Image], _T]) -> _T:
    """``read(opened image)``, with errors turned into one-line ValueErrors naming the file."""
    try:
        with Image.open(path) as img:
            return read(img)
    except FileNotFoundError:
        raise ValueError(f"image {path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"image {path}: cannot decode ({reason})") from None


def load_stored_image(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an image file's pixels as stored, and its EXIF orientation.

    Args:
        path: image file (any format Pillow reads).

    Returns:
        ``(image, orientation)``: uint8 tensor [3, H, W] RGB of the stored pixels, and the EXIF orientation
        (1..8; 1 when the file has none) that :func:`apply_orientation` applies.

    Raises:
        ValueError: the file is missing or cannot be decoded (one line naming the file and the reason).
    """
    def read(img: Image.Image) -> tuple[torch.Tensor, int]:
        img.load()  # the full decode here, so a truncated file fails now; a PNG's eXIf may follow the pixels
        return _rgb_tensor(img), _orientation(img)

    return _read(path, read)


def image_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """Stored height, width and EXIF orientation of an image file, from its header (no pixels decoded).

    A PNG whose eXIf chunk follows the pixel data reports orientation 1 here; :func:`load_stored_image`, which
    reads the whole file, sees it.

    Raises:
        ValueError: the file is missing or not a readable image (one line naming the file and the reason).
    """
    return _read(path, lambda img: (img.height, img.width, _orientation(img)))


def swaps_axes(orientation: int) -> bool:
    """Whether an EXIF orientation turns an H x W stored image into a W x H one (5 to 8)."""
    return _ORIENTATIONS.get(orientation, (False, ()))[0]


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn stored pixels upright as an EXIF orientation says (what OpenCV's ``IMREAD_COLOR`` and viewers do).

    Args:
        image: [..., H, W].
        orientation: EXIF orientation 1..8 (other values leave the image as it is).

    Returns:
        The image in the oriented frame: [..., H, W] for 1 to 4, [..., W, H] for 5 to 8; contiguous.
    """
    transpose, dims = _ORIENTATIONS.get(orientation, (False, ()))
    if transpose:
        image = image.transpose(-1, -2)
    if dims:
        image = image.flip(dims)
    return image.contiguous()


def load_image(path: str | os.PathLike, *, ignore_orientation: bool = False) -> torch.Tensor:
    """Read an image file as RGB, upright: the pixels MMDetection's OpenCV decode gives.

    Args:
        path: image file (any format Pillow reads; JPEG and PNG pixels equal ``cv2.imdecode(buf,
            cv2.IMREAD_COLOR)`` in RGB order).
        ignore_orientation: return the stored pixels, without applying the EXIF orientation tag (OpenCV's
            ``IMREAD_IGNORE_ORIENTATION``).

    Returns:
        uint8 tensor [3, H, W], contiguous.

    Raises:
        ValueError: the file is missing or cannot be decoded (one line naming the file and the reason).
    """
    image, orientation = load_stored_image(path)
    return image if ignore_orientation else apply_orientation(image, orientation)

