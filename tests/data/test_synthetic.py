"""The built-in shapes dataset: deterministic, valid COCO, cached and rebuilt correctly."""

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from genattn.data.synthetic import CLASS_NAMES, ensure_shapes_dataset

SMALL = {"num_train": 6, "num_val": 4, "image_size": 64}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = ensure_shapes_dataset(tmp_path / "a", seed=3, **SMALL)
    b = ensure_shapes_dataset(tmp_path / "b", seed=3, **SMALL)
    c = ensure_shapes_dataset(tmp_path / "c", seed=4, **SMALL)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)
    assert json.loads(a.val_ann.read_text()) != json.loads(c.val_ann.read_text())


def test_valid_coco_boxes_inside_images(tmp_path):
    paths = ensure_shapes_dataset(tmp_path / "s", seed=0, **SMALL)
    for img_dir, ann in ((paths.train_images, paths.train_ann), (paths.val_images, paths.val_ann)):
        coco = COCO(str(ann))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
        assert len(coco.getImgIds()) == (SMALL["num_train"] if "train" in img_dir.name else SMALL["num_val"])
        assert coco.getAnnIds()
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(img_dir / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (64, 64)
                assert im.mode == "RGB"
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                x, y, w, h = a["bbox"]
                assert w > 1 and h > 1 and x >= 0 and y >= 0
                assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
                assert 0 < a["area"] <= w * h + 1e-6 and a["iscrowd"] == 0
                assert a["category_id"] in coco.getCatIds()
                assert coco.annToMask(a).sum() > 0


def test_cached_reused_and_half_written_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GENATTN_CACHE", str(tmp_path / "cache"))
    paths = ensure_shapes_dataset(seed=1, **SMALL)
    assert paths.root.parent == tmp_path / "cache" and (paths.root / "COMPLETE").exists()
    before = paths.val_ann.stat().st_mtime_ns
    assert ensure_shapes_dataset(seed=1, **SMALL) == paths
    assert paths.val_ann.stat().st_mtime_ns == before  # reused, not regenerated
    digest = _digest(paths.root)
    (paths.root / "COMPLETE").unlink()  # as if a run had been killed before the marker was written
    paths.val_ann.write_text("{")
    ensure_shapes_dataset(seed=1, **SMALL)
    assert _digest(paths.root) == digest


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        ensure_shapes_dataset(tmp_path / "x", num_train=0)
    with pytest.raises(ValueError, match="image_size"):
        ensure_shapes_dataset(tmp_path / "x", image_size=8)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not a shapes dataset"):
        ensure_shapes_dataset(other, **SMALL)
    assert (other / "precious.txt").exists()
    ensure_shapes_dataset(tmp_path / "d", seed=0, **SMALL)
    with pytest.raises(ValueError, match="other parameters|generated with"):
        ensure_shapes_dataset(tmp_path / "d", seed=5, **SMALL)


def test_cache_of_an_older_revision_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("GENATTN_CACHE", str(tmp_path))
    paths = ensure_shapes_dataset(**SMALL)
    marker = json.loads((paths.root / "COMPLETE").read_text())
    (paths.root / "COMPLETE").write_text(json.dumps({**marker, "revision": 1}))
    assert ensure_shapes_dataset(**SMALL) == paths
    assert json.loads((paths.root / "COMPLETE").read_text()) == marker
