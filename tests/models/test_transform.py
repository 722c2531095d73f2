"""MMDetection's keep-ratio resize, normalisation, padding and box mapping."""

import cv2
import numpy as np
import pytest
import torch

from genattn.models.transform import MMDET_MEAN, MMDET_STD, DetectionTransform, resized_size


def _mmdet_input(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MMDetection 2.x's Resize + Normalize of a uint8 [3, H, W] image, with the calls mmcv 1.x makes."""
    img = cv2.resize(rgb.permute(1, 2, 0).numpy(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    img = img.astype(np.float32)  # mmcv.imnormalize, with Normalize's float32 mean and std
    mean = np.float64(np.array(MMDET_MEAN, dtype=np.float32).reshape(1, -1))
    stdinv = 1 / np.float64(np.array(MMDET_STD, dtype=np.float32).reshape(1, -1))
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return torch.from_numpy(img).permute(2, 0, 1)


@pytest.mark.parametrize("hw, expected", [
    ((480, 640), (800, 1067)),   # scale min(1333/640, 800/480) = 5/3; 640 * 5/3 = 1066.67 -> 1067
    ((1000, 200), (1333, 267)),  # long side limits: scale 1.333; 200 * 1.333 = 266.6 -> 267
    ((800, 1333), (800, 1333)),
    ((60, 80), (64, 85)),        # min_size 64 / max_size 128 below
])
def test_resized_size(hw, expected):
    limits = (64, 128) if hw == (60, 80) else (800, 1333)
    assert resized_size(*hw, *limits) == expected


def test_batch_sizes_padding_and_normalisation():
    t = DetectionTransform(64, 128)
    mean = torch.tensor(MMDET_MEAN).view(3, 1, 1) / 255
    a = mean.expand(3, 60, 80).clone()  # normalises to zero
    b = torch.ones(3, 40, 40)
    batch, _ = t([a, b])
    assert batch.image_sizes == [(64, 85), (64, 64)]
    assert batch.original_sizes == [(60, 80), (40, 40)]
    assert batch.tensors.shape == (2, 3, 64, 96)  # padded to multiples of 32
    assert batch.tensors[0].abs().max() < 1e-5
    expected = (1 - mean) / (torch.tensor(MMDET_STD).view(3, 1, 1) / 255)
    torch.testing.assert_close(batch.tensors[1, :, :64, :64], expected.expand(3, 64, 64))
    assert (batch.tensors[1, :, :, 64:] == 0).all()  # zero padding after normalisation
    assert batch.scale_factors(0).tolist() == [85 / 80, 64 / 60]


def test_targets_scaled_by_applied_factors_and_clipped():
    t = DetectionTransform(64, 128)
    boxes = torch.tensor([[8.0, 6.0, 40.0, 30.0], [70.0, 50.0, 90.0, 70.0]])
    batch, targets = t([torch.rand(3, 60, 80)], [{"boxes": boxes, "labels": torch.tensor([1, 2])}])
    sx, sy = 85 / 80, 64 / 60
    torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([8 * sx, 6 * sy, 40 * sx, 30 * sy]))
    torch.testing.assert_close(targets[0]["boxes"][1], torch.tensor([70 * sx, 50 * sy, 85.0, 64.0]))
    assert targets[0]["labels"].tolist() == [1, 2]
    assert boxes[1, 2] == 90  # the caller's tensor is untouched


def test_resize_is_bilinear_half_pixel_without_antialias():
    t = DetectionTransform(4, 4, image_mean=(0, 0, 0), image_std=(255, 255, 255), size_divisor=1)
    img = torch.arange(64.0).view(1, 8, 8).expand(3, 8, 8) / 64
    batch, _ = t([img])
    # 8 -> 4 with half-pixel centres samples between pixels 2i and 2i+1: the mean of each 2x2 block.
    expected = torch.nn.functional.avg_pool2d(img[None], 2)[0]
    torch.testing.assert_close(batch.tensors[0], expected)


@pytest.mark.parametrize("hw", [(480, 640), (375, 500), (640, 427), (1000, 1500), (23, 911), (1, 7)])
def test_uint8_images_get_mmdetections_input_exactly(hw):
    """uint8 in: MMDetection's resized, normalised and zero-padded float32 tensor, bit for bit."""
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(hw[0]))
    batch, _ = DetectionTransform()([img])
    h, w = batch.image_sizes[0]
    assert (h, w) == resized_size(*hw, 800, 1333) and batch.tensors.dtype == torch.float32
    assert torch.equal(batch.tensors[0, :, :h, :w], _mmdet_input(img, (h, w)))
    assert (batch.tensors[0, :, h:] == 0).all() and (batch.tensors[0, :, :, w:] == 0).all()


def test_normalisation_table_is_mmcvs_arithmetic():
    """Every uint8 value of every channel, against cv2.subtract / cv2.multiply as mmcv.imnormalize calls them."""
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    assert torch.equal(DetectionTransform().pixel_table, _mmdet_input(values, (1, 256))[:, 0])


def test_float_path_is_unchanged_and_close_to_the_exact_one():
    """Float images keep the float resize and normalisation; they land within a grey level of the exact input."""
    t = DetectionTransform()
    img = torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    exact, _ = t([img])
    approx, _ = t([img.float() / 255])
    resized = torch.nn.functional.interpolate(img[None].float() / 255, size=(800, 1067), mode="bilinear",
                                              align_corners=False)[0]
    mean = torch.tensor([123.675 / 255, 116.28 / 255, 103.53 / 255]).view(3, 1, 1)  # the former [0, 1] constants
    std = torch.tensor([58.395 / 255, 57.12 / 255, 57.375 / 255]).view(3, 1, 1)
    assert torch.equal(approx.tensors[0, :, :800, :1067], (resized - mean) / std)
    assert (approx.tensors - exact.tensors).abs().max() < 1.0 / min(MMDET_STD)


def test_uint8_targets_and_sizes_match_float_path():
    t = DetectionTransform(64, 128)
    img = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    boxes = torch.tensor([[8.0, 6.0, 40.0, 30.0]])
    b8, t8 = t([img], [{"boxes": boxes}])
    bf, tf = t([img.float() / 255], [{"boxes": boxes}])
    assert b8.image_sizes == bf.image_sizes and b8.tensors.shape == bf.tensors.shape
    assert torch.equal(t8[0]["boxes"], tf[0]["boxes"])


@pytest.mark.parametrize("bad", [torch.rand(1, 3, 8, 8), torch.rand(4, 8, 8), torch.zeros(3, 8, 8, dtype=torch.int64),
                                 torch.zeros(3, 0, 8, dtype=torch.uint8)])
def test_bad_images_raise(bad):
    with pytest.raises(ValueError, match=r"images\[0\]"):
        DetectionTransform(32, 32)([bad])


@pytest.mark.parametrize("kwargs", [dict(image_mean=(1.0, 2.0)), dict(image_std=(1.0, 0.0, 1.0))])
def test_bad_normalisation_raises(kwargs):
    with pytest.raises(ValueError, match="image_mean and image_std"):
        DetectionTransform(**kwargs)


@pytest.mark.parametrize("hw", [(480, 640), (375, 500), (23, 911)])
def test_flip_after_resize_is_mmdetections_flipped_input_and_boxes(hw):
    """A target with 'flip': resize, then flip (MMDetection's Resize -> RandomFlip): the pixels of a flip of
    cv2's resize, boxes flipped in the resized image, x1' = w - x2; flipping before the resize is not the same."""
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(hw[1]))
    boxes = torch.tensor([[3.0, 2.0, hw[1] / 2, hw[0] - 1.5], [hw[1] / 3, 0.0, hw[1] + 5.0, hw[0] / 4]])
    t = DetectionTransform()
    batch, targets = t([img], [{"boxes": boxes, "labels": torch.tensor([1, 2]), "flip": True}])
    plain, plain_targets = t([img], [{"boxes": boxes, "labels": torch.tensor([1, 2]), "flip": False}])
    h, w = batch.image_sizes[0]
    assert torch.equal(batch.tensors[0, :, :h, :w], _mmdet_input(img, (h, w)).flip(-1))
    assert (batch.tensors[0, :, h:] == 0).all() and (batch.tensors[0, :, :, w:] == 0).all()
    pb = plain_targets[0]["boxes"]
    torch.testing.assert_close(targets[0]["boxes"], torch.stack([w - pb[:, 2], pb[:, 1], w - pb[:, 0], pb[:, 3]], 1),
                               rtol=0, atol=0)
    if hw == (480, 640):  # the resize is not mirror-symmetric: flipping the decoded image first differs
        before, _ = t([img.flip(-1)])
        assert not torch.equal(before.tensors, batch.tensors)
