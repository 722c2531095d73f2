"""A small COCO-format dataset with the awkward cases MMDetection's rules are about."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_images(img_dir: Path, sizes: dict[str, tuple[int, int]]) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / name)


@pytest.fixture
def coco_files(tmp_path):
    """Five images: 1 normal (2 boxes + 1 crowd + 1 tiny + 1 outside), 2 portrait with a box, 3 without boxes,
    4 too small (20x20) with a box, 5 wide with a box. Categories 5 'cat' and 9 'dog'."""
    img_dir = tmp_path / "images"
    sizes = {"a.png": (64, 48), "b.png": (40, 60), "c.png": (50, 50), "d.png": (20, 20), "e.png": (80, 40)}
    write_images(img_dir, sizes)
    images = [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(sizes.items())]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30.5, 10, 15, 30], "area": 450, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [5, 5, 0.5, 8], "area": 4, "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 9, "bbox": [70, 5, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 6, "image_id": 2, "category_id": 9, "bbox": [5, 5, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 7, "image_id": 4, "category_id": 5, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 8, "image_id": 5, "category_id": 5, "bbox": [10, 5, 30, 20], "area": 600, "iscrowd": 0},
    ]
    data = {"images": images, "annotations": anns, "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return img_dir, ann_file, data
