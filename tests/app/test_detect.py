"""genattn detect over files, folders and glob patterns, in batches, with unreadable images and autocast.

Cost: a few seconds (a tiny random-weight model on 64 px images).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_checks import one_error_line
from genattn.app.cli import main
from genattn.app.detect import detect_images, image_files

BASE = "faster_rcnn_r50_fpn_1x_coco"
TINY = ["--backbone", '{"layers": [1, 1, 1, 1], "base_width": 8, "stem_width": 8}', "--image-size", "64",
        "--set", "heads.fpn_channels=16", "heads.representation_size=32", "heads.box_score_thresh=0.0"]


@pytest.fixture
def photos(tmp_path):
    """Two folders of 64x48 PNGs and JPEGs, a text file and an unreadable 'image' (b/5b.png)."""
    rng = np.random.default_rng(0)
    for folder, names in (("a", ["2.png", "1.jpg", "3.png"]), ("b", ["4.png", "5.png", "6.png"])):
        (tmp_path / folder).mkdir()
        for name in names:
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / folder / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "5b.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def test_inputs_expand_in_order(photos):
    a, b = photos / "a", photos / "b"
    assert image_files([a]) == [a / "1.jpg", a / "2.png", a / "3.png"]  # sorted, image suffixes only
    assert image_files([str(b / "[45].png"), a / "2.png", str(photos / "*" / "2.png")]) == [
        b / "4.png", b / "5.png", a / "2.png"]  # each file once, first place kept
    assert image_files([str(photos / "**" / "5.png")]) == [b / "5.png"]
    with pytest.raises(FileNotFoundError, match="image not found"):
        image_files([a / "9.png"])
    with pytest.raises(FileNotFoundError, match="no files match"):
        image_files([str(a / "*.gif")])
    (photos / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        image_files([photos / "empty"])


def test_folder_glob_batch_and_a_bad_image(photos, capsys):
    out = photos / "out"
    argv = ["detect", BASE, str(photos / "a"), str(photos / "b" / "*.png"), *TINY, "--out", str(out),
            "--batch-size", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "5b.png" in captured.err  # reported, not fatal
    assert "detect: 100%" in captured.err  # the progress bar, from 5 images on
    assert "1 unreadable image(s) skipped" in captured.out
    dets = json.loads((out / "detections.json").read_text())
    files = [str(photos / "a" / n) for n in ("1.jpg", "2.png", "3.png")] + [
        str(photos / "b" / n) for n in ("4.png", "5.png", "6.png")]
    assert sorted({d["file_name"] for d in dets}) == sorted(files)
    # image_id is the position among all inputs: the unreadable 5b.png (position 5) leaves a gap
    assert {d["image_id"] for d in dets} == {0, 1, 2, 3, 4, 6}
    assert len(list(out.glob("*_det.png"))) == 6

    # --strict (on b alone: 4 images, no progress bar on stderr): one error line naming the file
    line = one_error_line(capsys, main(["detect", BASE, str(photos / "b"), *TINY, "--out", str(out), "--strict"]))
    assert "5b.png" in line


def test_batches_give_the_detections_of_single_images(photos):
    from genattn.models import get_model

    torch.manual_seed(0)
    model = get_model(BASE, min_size=64, max_size=64, fpn_channels=16, representation_size=32,
                      box_score_thresh=0.0, backbone={"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8})
    files = image_files([photos / "a"])  # all 64x48: the same padding alone and in a batch
    one = detect_images(model, files, photos / "one", pictures=False)
    three = detect_images(model, files, photos / "three", batch_size=3, pictures=False)
    for x, y in zip(one["images"], three["images"]):
        assert len(x["detections"]) == len(y["detections"]) > 0
        for dx, dy in zip(x["detections"], y["detections"]):
            assert dx["category_id"] == dy["category_id"]
            assert np.allclose(dx["bbox"], dy["bbox"], atol=0.02) and abs(dx["score"] - dy["score"]) <= 2e-4
    assert not list((photos / "one").glob("*.png"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_flags(photos, amp, capsys):
    out = photos / amp
    assert main(["detect", BASE, str(photos / "a" / "1.jpg"), *TINY, "--out", str(out), "--amp", amp]) == 0
    dets = json.loads((out / "detections.json").read_text())
    assert dets and all(np.isfinite(d["bbox"]).all() for d in dets)
    line = one_error_line(capsys, main(["detect", BASE, str(photos / "a" / "1.jpg"), *TINY, "--amp", "fp8"]))
    assert "invalid choice: 'fp8'" in line
