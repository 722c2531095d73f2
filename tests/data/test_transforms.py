"""Image decoding against MMDetection's decoder, OpenCV's ``cv2.imdecode(buf, cv2.IMREAD_COLOR)`` (test extra):
the same pixels for JPEG and PNG, the EXIF orientation applied the same way, and the stored pixels on request."""

import io
import struct

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from genattn.data.transforms import apply_orientation, image_header, load_image, load_stored_image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise: every orientation and every chroma upsampling error shows."""
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(-40, 40, (h, w, 3))
    return np.clip(np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1) + noise, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(pixels) if mode is None else Image.frombytes(mode, pixels.shape[1::-1], pixels.tobytes())).save(
        buf, fmt, **kwargs)
    return buf.getvalue()


def _cv2(data: bytes, flags: int = cv2.IMREAD_COLOR) -> torch.Tensor:
    """OpenCV's decode as a [3, H, W] RGB tensor."""
    return torch.from_numpy(cv2.imdecode(np.frombuffer(data, np.uint8), flags)[..., ::-1].copy()).permute(2, 0, 1)


def _ours(data: bytes, tmp_path, name: str, **kwargs) -> torch.Tensor:
    path = tmp_path / name
    path.write_bytes(data)
    image = load_image(path, **kwargs)
    assert image.dtype == torch.uint8 and image.is_contiguous()
    return image


@pytest.mark.parametrize("subsampling", [0, 2], ids=["444", "420"])
def test_jpeg_all_orientations_equal_opencv(subsampling, tmp_path):
    pixels = _pixels(21, 30)
    for orientation in range(1, 9):
        data = _encode(pixels, "JPEG", quality=90, subsampling=subsampling, exif=_exif(orientation))
        oriented = _ours(data, tmp_path, "a.jpg")
        assert torch.equal(oriented, _cv2(data)), orientation
        assert oriented.shape[1:] == ((30, 21) if orientation >= 5 else (21, 30))
        stored = _ours(data, tmp_path, "a.jpg", ignore_orientation=True)
        assert torch.equal(stored, _cv2(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)), orientation
        assert torch.equal(oriented, apply_orientation(stored, orientation))


def test_png_exif_chunk_orientations_equal_opencv(tmp_path):
    pixels = _pixels(7, 10)
    for orientation in (2, 5, 6, 7, 8):
        data = _encode(pixels, "PNG", exif=_exif(orientation))  # Pillow writes an eXIf chunk, OpenCV reads it
        assert torch.equal(_ours(data, tmp_path, "a.png"), _cv2(data)), orientation
        assert torch.equal(_ours(data, tmp_path, "a.png", ignore_orientation=True),
                           torch.from_numpy(pixels).permute(2, 0, 1))


def test_conversions_follow_opencv_where_pillow_differs(tmp_path):
    cmyk = np.random.default_rng(1).integers(0, 256, (9, 13, 4), dtype=np.uint8)
    cmyk_jpeg = _encode(cmyk, "JPEG", "CMYK", quality=95)
    with Image.open(io.BytesIO(cmyk_jpeg)) as im:  # Pillow's own CMYK -> RGB is up to 2 off OpenCV's
        assert not torch.equal(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1), _cv2(cmyk_jpeg))
    assert torch.equal(_ours(cmyk_jpeg, tmp_path, "cmyk.jpg"), _cv2(cmyk_jpeg))
    grey16 = (np.arange(9 * 13, dtype=np.uint16).reshape(9, 13) * 557).astype(np.uint16)
    grey16_png = cv2.imencode(".png", grey16)[1].tobytes()  # Pillow's convert("RGB") would clip at 255
    assert torch.equal(_ours(grey16_png, tmp_path, "grey16.png"), _cv2(grey16_png))
    grey_jpeg = _encode(_pixels(9, 13)[..., 0], "JPEG", exif=_exif(8))
    assert torch.equal(_ours(grey_jpeg, tmp_path, "grey.jpg"), _cv2(grey_jpeg))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow reads the broken block for its dpi
def test_orientation_only_from_the_exif_block_like_opencv(tmp_path):
    pixels = _pixels(6, 9)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
           b'</x:xmpmeta>')
    xmp_only = _encode(pixels, "JPEG", xmp=xmp)  # PIL.ImageOps.exif_transpose would rotate this one
    assert _ours(xmp_only, tmp_path, "xmp.jpg").shape == (3, 6, 9) == _cv2(xmp_only).shape
    # A broken EXIF block (truncated directory) and an out-of-range value leave the image as stored.
    plain = _encode(pixels, "JPEG")
    for exif in (_exif(6)[:20], _exif(9)):
        segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
        data = plain[:2] + segment + plain[2:]
        assert torch.equal(_ours(data, tmp_path, "bad.jpg"), _cv2(data))
        assert _cv2(data).shape == (3, 6, 9)


def test_header_and_stored_pixels(tmp_path):
    path = tmp_path / "p.jpg"
    path.write_bytes(_encode(_pixels(8, 12), "JPEG", exif=_exif(6)))
    assert image_header(path) == (8, 12, 6)
    stored, orientation = load_stored_image(path)
    assert stored.shape == (3, 8, 12) and orientation == 6
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for read in (image_header, load_image):
        with pytest.raises(ValueError, match=r"^image .*bad\.jpg: cannot decode"):
            read(tmp_path / "bad.jpg")
        with pytest.raises(ValueError, match=r"^image .*none\.jpg: file not found"):
            read(tmp_path / "none.jpg")
