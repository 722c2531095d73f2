"""OpenCV's uint8 INTER_LINEAR resize, bit for bit: cv2 (test extra) is the oracle."""

import cv2
import numpy as np
import pytest
import torch

from genattn.models.resize import resize_linear_uint8


def _cv2(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.resize of a [3, H, W] uint8 tensor, as MMDetection calls it (HWC, dsize = (w, h))."""
    out = cv2.resize(image.permute(1, 2, 0).numpy(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out.reshape(size[0], size[1], -1)).permute(2, 0, 1)


def _random(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("src, dst", [
    ((480, 640), (800, 1067)),    # COCO-like, enlarged to the 1333x800 test scale
    ((427, 640), (800, 1199)),
    ((640, 481), (1067, 802)),    # portrait, odd
    ((1200, 1600), (800, 1067)),  # shrunk: rows are picked before the horizontal pass
    ((480, 640), (240, 320)),     # exactly half: OpenCV switches to INTER_AREA, which must agree
    ((600, 900), (200, 300)),     # a third
    ((37, 53), (100, 29)),        # enlarge one axis, shrink the other
    ((7, 5), (3, 11)),
    ((1, 9), (4, 4)),             # 1-pixel sides, both ways
    ((5, 1), (3, 7)),
    ((1, 1), (2, 3)),
    ((3, 3), (1, 1)),
    ((800, 1333), (800, 1333)),   # same size: a copy
])
def test_matches_cv2(src, dst):
    img = _random(*src, seed=src[0] * 7 + dst[1])
    assert torch.equal(resize_linear_uint8(img, dst), _cv2(img, dst))


def test_matches_cv2_on_random_sizes():
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        sh, sw, dh, dw = (int(v) for v in torch.randint(1, 300, (4,), generator=g))
        img = _random(sh, sw, seed=i)
        assert torch.equal(resize_linear_uint8(img, (dh, dw)), _cv2(img, (dh, dw))), (sh, sw, dh, dw)


@pytest.mark.parametrize("dst", [(101, 77), (250, 190), (40, 31)])
def test_matches_cv2_on_extremes(dst):
    """Full-range edges (a checkerboard of 0 and 255) and a constant 255 image (no overflow, no saturation)."""
    board = ((torch.arange(60)[:, None] + torch.arange(45)) % 2 * 255).to(torch.uint8).expand(3, 60, 45)
    white = torch.full((3, 60, 45), 255, dtype=torch.uint8)
    for img in (board, white):
        assert torch.equal(resize_linear_uint8(img, dst), _cv2(img.contiguous(), dst))


def test_hand_computed_border_rows():
    """[0, 3] (one row) to 3x3, without cv2.

    Columns: scale 2/3, column 1 reads x = 0.5: weights (1024, 1024), h = 3 * 1024 = 3072, h >> 4 = 192.
    Rows: scale 1/3; row 0 reads y = -1/3: floor -1, fraction 2/3, weights (683, 1365), rows -1 and 0 both
    clamped to 0 with the weights kept: (683 * 192 >> 16) + (1365 * 192 >> 16) = 2 + 3, (5 + 2) >> 2 = 1.
    Row 1 reads y = 0: weights (2048, 0): 2048 * 192 >> 16 = 6, (6 + 2) >> 2 = 2 (the exact 1.5, rounded up).
    The float resize gives 1.5 everywhere in column 1; clamping the row weights like the columns gives 2.
    """
    img = torch.tensor([[[0, 3]]], dtype=torch.uint8)
    expected = torch.tensor([[[0, 1, 3], [0, 2, 3], [0, 1, 3]]], dtype=torch.uint8)
    assert torch.equal(resize_linear_uint8(img, (3, 3)), expected)


def test_leading_dims_and_views():
    img = _random(30, 40, seed=1)
    batch = torch.stack([img, img.flip(0)])
    out = resize_linear_uint8(batch, (45, 61))
    assert out.shape == (2, 3, 45, 61) and out.dtype == torch.uint8
    assert torch.equal(out[1], resize_linear_uint8(img.flip(0), (45, 61)))
    hwc = img.permute(1, 2, 0).contiguous()
    assert torch.equal(resize_linear_uint8(hwc.permute(2, 0, 1), (45, 61)), out[0])  # a non-contiguous view


@pytest.mark.parametrize("image, size", [
    (torch.rand(3, 8, 8), (4, 4)),
    (torch.zeros(8, dtype=torch.uint8), (4, 4)),
    (torch.zeros(3, 0, 8, dtype=torch.uint8), (4, 4)),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), (0, 4)),
])
def test_bad_inputs_raise(image, size):
    with pytest.raises(ValueError):
        resize_linear_uint8(image, size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img = _random(480, 640, seed=2)
    assert torch.equal(resize_linear_uint8(img.cuda(), (800, 1067)).cpu(), resize_linear_uint8(img, (800, 1067)))
