"""MMDetection's keep-ratio resize, normalisation, padding and box mapping."""

import pytest
import torch

from genattn.models.transform import MMDET_MEAN, MMDET_STD, DetectionTransform, resized_size


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
    mean = torch.tensor(MMDET_MEAN).view(3, 1, 1)
    a = mean.expand(3, 60, 80).clone()  # normalises to zero
    b = torch.ones(3, 40, 40)
    batch, _ = t([a, b])
    assert batch.image_sizes == [(64, 85), (64, 64)]
    assert batch.original_sizes == [(60, 80), (40, 40)]
    assert batch.tensors.shape == (2, 3, 64, 96)  # padded to multiples of 32
    assert batch.tensors[0].abs().max() < 1e-5
    expected = (1 - mean) / torch.tensor(MMDET_STD).view(3, 1, 1)
    torch.testing.assert_close(batch.tensors[1, :, :64, :64], expected.expand(3, 64, 64))
    assert (batch.tensors[1, :, :, 64:] == 0).all()  # zero padding after normalisation
    assert batch.scale_factors(0) == (85 / 80, 64 / 60)


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
    t = DetectionTransform(4, 4, image_mean=(0, 0, 0), image_std=(1, 1, 1), size_divisor=1)
    img = torch.arange(64.0).view(1, 8, 8).expand(3, 8, 8) / 64
    batch, _ = t([img])
    # 8 -> 4 with half-pixel centres samples between pixels 2i and 2i+1: the mean of each 2x2 block.
    expected = torch.nn.functional.avg_pool2d(img[None], 2)[0]
    torch.testing.assert_close(batch.tensors[0], expected)


@pytest.mark.parametrize("bad", [torch.rand(1, 3, 8, 8), torch.rand(4, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)])
def test_bad_images_raise(bad):
    with pytest.raises(ValueError, match=r"images\[0\]"):
        DetectionTransform(32, 32)([bad])
