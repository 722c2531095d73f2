import json

import numpy as np
import pytest
import torch
from PIL import Image

from genattn.data import CocoDetection, collate


def test_item_contract_and_filtering(coco_files):
    img_dir, ann_file, _ = coco_files
    ds = CocoDetection(img_dir, ann_file, train=True, flip_prob=0.0)
    assert ds.category_ids == (5, 9) and ds.class_names == ("cat", "dog")
    # c (no box) and d (20 px) are dropped in training; crowd, sub-pixel and outside boxes are not used.
    assert ds.ids == [1, 2, 5]
    assert ds.stats == dict(images=5, crowd_boxes_ignored=1, small_boxes_dropped=2, images_without_boxes_dropped=1,
                            small_images_dropped=1, images_kept=3, exif_orientation_ignored=0)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64) and image.is_contiguous()
    with Image.open(img_dir / "a.png") as im:  # the decoded pixels as they are: the model resizes them exactly
        assert torch.equal(image, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3, 22, 13], [30.5, 10, 45.5, 40]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [5, 9]
    assert target["image_id"] == 1 and target["orig_size"] == (48, 64)
    assert ds.aspect_ratio_groups() == [1, 0, 1]


def test_eval_mode_keeps_every_image_and_never_flips(coco_files):
    img_dir, ann_file, _ = coco_files
    ds = CocoDetection(img_dir, ann_file, train=False)
    assert ds.ids == [1, 2, 3, 4, 5] and ds.flip_prob == 0.0
    image, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, targets = collate([ds[0], ds[1]])
    assert [im.shape for im in images] == [(3, 48, 64), (3, 60, 40)] and len(targets) == 2


def test_flip_is_decided_per_target_and_seeded_by_epoch_and_index(coco_files):
    img_dir, ann_file, _ = coco_files
    plain = CocoDetection(img_dir, ann_file, train=True, flip_prob=0.0)
    flipped = CocoDetection(img_dir, ann_file, train=True, flip_prob=1.0)
    (im0, t0), (im1, t1) = plain[0], flipped[0]
    # The decision travels in the target; the model flips after resizing, as MMDetection does.
    assert torch.equal(im1, im0) and torch.equal(t1["boxes"], t0["boxes"])
    assert t1["flip"] is True and t0["flip"] is False

    def decisions(ds, epoch):
        ds.set_epoch(epoch)
        return [ds[i][1]["flip"] for i in range(len(ds))]

    half = CocoDetection(img_dir, ann_file, train=True, seed=3)
    again = CocoDetection(img_dir, ann_file, train=True, seed=3)
    assert decisions(half, 0) == decisions(again, 0)
    assert len({tuple(decisions(half, e)) for e in range(8)}) > 1  # the epoch changes the draws


def test_bad_sample_skip_replaces_and_reports(coco_files):
    img_dir, ann_file, _ = coco_files
    (img_dir / "a.png").write_bytes(b"not a png")
    ds = CocoDetection(img_dir, ann_file, train=True, bad_sample="skip", flip_prob=0.0)
    image, target = ds[0]
    assert target["image_id"] == 2  # the next readable image
    assert len(target["skipped"]) == 1 and "a.png" in target["skipped"][0]
    assert ds[1][1]["skipped"] == []


@pytest.mark.parametrize("case, message", [
    ("missing_image", r"image .*a\.png: file not found"),
    ("corrupt_image", r"image .*a\.png: cannot decode"),
    ("wrong_size", r"image .*a\.png: size 10x10 does not match the annotation's 64x48"),
])
def test_bad_images_name_the_file(coco_files, case, message):
    img_dir, ann_file, _ = coco_files
    path = img_dir / "a.png"
    if case == "missing_image":
        path.unlink()
    elif case == "corrupt_image":
        path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    else:
        from PIL import Image
        Image.new("RGB", (10, 10)).save(path)
    ds = CocoDetection(img_dir, ann_file, train=True)
    with pytest.raises(ValueError, match=message):
        ds[0]


def _edit(data, case):
    if case == "unknown_category":
        data["annotations"][1]["category_id"] = 42
    elif case == "unknown_image":
        data["annotations"][0]["image_id"] = 99
    elif case == "no_categories":
        del data["categories"]
    elif case == "bad_bbox":
        data["annotations"][0]["bbox"] = [1, 2, 3]
    elif case == "image_fields":
        del data["images"][0]["width"]
    return data


@pytest.mark.parametrize("case, message", [
    ("unknown_category", r"annotation 2 has unknown category id 42 \(categories: \[5, 9\]\)"),
    ("unknown_image", r"annotation 1 refers to unknown image id 99"),
    ("no_categories", r"malformed: no 'categories' list"),
    ("bad_bbox", r"annotation 1 has no valid 'bbox'"),
    ("image_fields", r"malformed image entry"),
])
def test_bad_annotations_name_the_file_and_reason(coco_files, tmp_path, case, message):
    img_dir, _, data = coco_files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(data, case)))
    with pytest.raises(ValueError, match=r"^annotation file .*bad\.json: " + message):
        CocoDetection(img_dir, bad, train=True)


def test_missing_or_malformed_files(coco_files, tmp_path):
    img_dir, ann_file, _ = coco_files
    with pytest.raises(ValueError, match=r"annotation file .*nope\.json: not found"):
        CocoDetection(img_dir, tmp_path / "nope.json", train=True)
    with pytest.raises(ValueError, match=r"image folder .*missing: not found"):
        CocoDetection(tmp_path / "missing", ann_file, train=True)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"annotation file .*broken\.json: malformed JSON \(.* line 1 column"):
        CocoDetection(img_dir, broken, train=True)
    with pytest.raises(ValueError, match="bad_sample"):
        CocoDetection(img_dir, ann_file, train=True, bad_sample="ignore")


def test_training_set_without_any_box_is_an_error(coco_files, tmp_path):
    img_dir, _, data = coco_files
    data["annotations"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no image has a usable box"):
        CocoDetection(img_dir, empty, train=True)
    assert len(CocoDetection(img_dir, empty, train=False)) == 5


def _save_with_orientation(path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())  # PNG: lossless, and OpenCV applies its eXIf tag


def test_exif_orientation_upright_unless_annotated_on_the_stored_pixels(tmp_path):
    red = torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None]
    upright = np.full((48, 64, 3), 128, np.uint8)
    upright[10:30, 5:40] = red[:, 0, 0].numpy()  # box x 5..40, y 10..30
    sideways = np.ascontiguousarray(np.rot90(upright))  # stored turned 90 degrees anticlockwise: EXIF tag 6
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name in ("upright_ann.png", "stored_ann.png", "wrong_ann.png"):
        _save_with_orientation(img_dir / name, sideways, 6)
    images = [{"id": 1, "file_name": "upright_ann.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "stored_ann.png", "width": 48, "height": 64},  # a tool that ignored the tag
              {"id": 3, "file_name": "wrong_ann.png", "width": 50, "height": 64}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 10, 35, 20]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 64 - 40, 20, 35]},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [10, 24, 20, 35]}]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "r"}]}))

    ds = CocoDetection(img_dir, ann_file, train=True, flip_prob=0.0)
    assert ds.stats["exif_orientation_ignored"] == 1
    for index, pixels in ((0, upright), (1, sideways)):
        image, target = ds[index]
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
        x0, y0, x1, y1 = (int(v) for v in target["boxes"][0])
        box = torch.zeros(image.shape[1:], dtype=torch.bool)
        box[y0:y1, x0:x1] = True
        assert torch.equal((image == red).all(0), box)  # the box covers the red rectangle exactly
    with pytest.raises(ValueError, match=r"wrong_ann\.png: size 64x48 \(EXIF orientation 6 applied\) does not "
                                         r"match the annotation's 50x64"):
        ds[2]

    stored = CocoDetection(img_dir, ann_file, train=False, ignore_orientation=True)
    assert stored.stats["exif_orientation_ignored"] == 0
    assert torch.equal(stored[1][0], torch.from_numpy(sideways).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"upright_ann\.png: size 48x64 does not match the annotation's 64x48"):
        stored[0]
