"""Pictures: detections drawn on images; attention maps of a query pixel, per block, head and term."""

import numpy as np
import pytest
import torch
from PIL import Image

from genattn.app import pictures as viz
from genattn.app.detect import detect_images
from genattn.models import get_model

TINY = {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8, "frozen_stages": -1, "norm_eval": False}



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = get_model("faster_rcnn_r50_fpn_attention_1111_1x_coco", num_classes=3, min_size=96, max_size=128,
                  backbone=TINY, fpn_channels=16, representation_size=32).eval()
    for block in m.backbone.modules():  # gamma starts at 0; the maps do not depend on it, the output does
        if hasattr(block, "gamma"):
            torch.nn.init.constant_(block.gamma, 0.5)
    return m


def test_draw_detections_draws_only_above_threshold():
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    det = {"boxes": torch.tensor([[5.0, 5, 30, 30], [40, 10, 60, 40]]), "scores": torch.tensor([0.9, 0.1]),
           "labels": torch.tensor([1, 2])}
    out = np.asarray(viz.draw_detections(image, det, {1: "circle", 2: "square"}, score_thr=0.5))
    assert out.shape == (48, 64, 3)
    assert out[5:31, 5:31].any() and not out[25:38, 45:58].any()
    assert not np.asarray(image).any()  # drawn on a copy
    big = viz.draw_detections(image, det, {}, score_thr=0.5, scale=4)
    assert big.size == (256, 192) and np.asarray(big)[20:124, 20:124].any()


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        viz.load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: cannot decode"):
        viz.load_image(bad)


def test_attention_maps_per_block_term_and_head(model):
    image = torch.rand(3, 60, 80)  # resized to 96x128, padded to 96x128
    blocks = viz.attention_maps(model, image, (79, 10))
    assert [b["name"] for b in blocks] == ["layer3.0", "layer4.0"]
    for b, stride in zip(blocks, (16, 32)):
        assert set(b["maps"]) == {"all", "E1", "E2", "E3", "E4"}
        hf, wf = b["feature_size"]
        assert (hf, wf) == (96 // stride, 128 // stride) and b["stride"] == stride
        assert b["query"] == (wf - 1, int(10 * 96 / 60 // stride))  # the right edge, scaled like the image
        for amap in b["maps"].values():
            assert amap.shape == (8, -(-hf // 2), -(-wf // 2))  # 8 heads, keys every 2 pixels
            np.testing.assert_allclose(amap.sum((1, 2)), 1.0, rtol=1e-4)
    # The pictures say which key grid their colours are drawn on: 3x4 keys of 32 px at stage 3, 2x2 of 64 at 4.
    assert [viz.key_grid(b) for b in blocks] == [{"size": (3, 4), "cell_px": 32}, {"size": (2, 2), "cell_px": 64}]
    title = viz.block_title(blocks[0], (79, 10))
    assert "keys on a 3x4 grid, one per 32x32 px" in title and "uniform (1/12)" in title


def test_attention_bad_point_and_no_attention(model):
    with pytest.raises(ValueError, match="outside the 80x60 image"):
        viz.attention_maps(model, torch.rand(3, 60, 80), (80, 0))
    plain = get_model("faster_rcnn_r50_fpn_1x_coco", num_classes=3, min_size=64, max_size=64, backbone=TINY,
                      fpn_channels=16, representation_size=32).eval()
    with pytest.raises(ValueError, match="no attention blocks"):
        viz.attention_maps(plain, torch.rand(3, 64, 64), (1, 1))


def test_attention_and_detection_pictures(model, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)).save(path)
    files = viz.attention_pictures(model, path, (20, 30), tmp_path / "att")
    assert [f.name for f in files] == ["attention.png", "attention_layer3_0.png", "attention_layer4_0.png"]
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.width > 300
    result = detect_images(model, [path], tmp_path / "det", score_thr=0.0)
    assert result["json"].exists() and result["images"][0]["png"].exists()
    with Image.open(result["images"][0]["png"]) as im:
        assert im.size[0] >= 80


def test_detect_on_an_exif_rotated_photo_equals_the_upright_picture(model, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 gives the detections of the same picture stored
    upright (a lossless PNG of OpenCV's decode, MMDetection's reader), in the upright frame."""
    import cv2

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 48 high, viewed 48 x 64
    stored = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(photo, quality=90, exif=exif.tobytes())
    upright = tmp_path / "upright.png"
    Image.fromarray(cv2.imread(str(photo), cv2.IMREAD_COLOR)[..., ::-1]).save(upright)

    def detections(path, **kwargs):
        result = detect_images(model, [path], tmp_path / path.stem, score_thr=0.0, **kwargs)
        with Image.open(result["images"][0]["png"]) as im:
            size = im.size
        return [{k: d[k] for k in ("bbox", "score", "category_id")} for d in result["images"][0]["detections"]], size

    rotated, picture = detections(photo)
    assert rotated and (rotated, picture) == detections(upright)
    assert picture == (48 * 8, 64 * 8)  # drawn upright (small images are enlarged 8x)
    assert max(d["bbox"][0] + d["bbox"][2] for d in rotated) <= 48 + 1e-3
    as_stored, picture = detections(photo, ignore_orientation=True)
    assert picture == (64 * 8, 48 * 8) and as_stored != rotated
