"""COCO-format detection datasets (an instances JSON plus an image folder), read with pycocotools.

Follows MMDetection's ``CocoDataset`` for what reaches the model: crowd boxes are ignored, boxes that miss the
image or are narrower/shorter than 1 pixel are dropped, and in training images without a usable box or smaller
than 32 pixels are dropped. Labels are the dataset's category ids (e.g. COCO's 1..90); the model maps them to
its own class indices.

Images are read upright, their EXIF orientation applied as MMDetection's OpenCV decode applies it, and boxes are
in that frame. An image whose annotation was evidently made on its stored pixels (an annotation tool that
ignored the tag: the annotation's width and height are the stored ones, which the orientation swaps) is read
as stored, so that its boxes stay on their objects; such images are counted in ``stats``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO

from genattn.data.transforms import apply_orientation, image_header, load_stored_image, swaps_axes

__all__ = ["CocoDetection", "load_coco_json", "annotated_as_stored"]

logger = logging.getLogger(__name__)


#: Threads reading image headers when a dataset is opened (file access, not computation).
_HEADER_THREADS = 8


def annotated_as_stored(stored_size: tuple[int, int], orientation: int, annotated_size: tuple[int, int]) -> bool:
    """Whether an image's annotation was made on its stored pixels rather than on the upright picture.

    True when the EXIF orientation swaps height and width, the annotation's size equals the stored size and so
    contradicts the oriented one. Orientations that keep the size (mirror, 180 degrees) and square images give
    no evidence: they are read upright.

    Args:
        stored_size: (height, width) of the stored pixels.
        orientation: the file's EXIF orientation, 1..8.
        annotated_size: (height, width) from the annotation file.
    """
    return swaps_axes(orientation) and stored_size[0] != stored_size[1] and tuple(stored_size) == tuple(annotated_size)


def _fail(ann_file: Path, reason: str) -> ValueError:
    return ValueError(f"annotation file {ann_file}: {reason}")


def load_coco_json(ann_file: str | os.PathLike, *, require_annotations: bool = True) -> COCO:
    """Read and check a COCO instances file.

    Args:
        ann_file: path of the JSON file.
        require_annotations: if False, a file without an ``annotations`` list (e.g. COCO's test-dev
            ``image_info`` files) is accepted as having none.

    Returns:
        A pycocotools ``COCO`` object. Missing ``iscrowd``/``area``/``id`` fields of annotations are filled in
        (0, box area, a fresh id) because pycocotools' evaluation needs them.

    Raises:
        ValueError: the file is missing or malformed, or an annotation refers to an unknown image or category
            (one line naming the file and the reason).
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise _fail(ann_file, "not found" if not ann_file.exists() else "not a file")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise _fail(ann_file, f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError:
        raise _fail(ann_file, "malformed JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise _fail(ann_file, "malformed: the top level is not a JSON object")
    if "annotations" not in data and not require_annotations:
        data["annotations"] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(ann_file, f"malformed: no '{key}' list")

    cat_ids = set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise _fail(ann_file, f"malformed category {str(cat)[:60]} (needs an integer 'id' and a 'name')")
        if cat["id"] in cat_ids:
            raise _fail(ann_file, f"category id {cat['id']} appears twice")
        cat_ids.add(cat["id"])
    if not cat_ids:
        raise _fail(ann_file, "malformed: 'categories' is empty")

    img_ids = set()
    for img in data["images"]:
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "width", "height")):
            raise _fail(ann_file, f"malformed image entry {str(img)[:60]} (needs id, file_name, width, height)")
        if img["id"] in img_ids:
            raise _fail(ann_file, f"image id {img['id']} appears twice")
        img_ids.add(img["id"])

    used_ids = {a["id"] for a in data["annotations"] if isinstance(a, dict) and "id" in a}
    next_id = max([i for i in used_ids if isinstance(i, int)], default=0) + 1
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(ann_file, f"annotation #{i} is not an object")
        name = f"annotation {ann.get('id', '#' + str(i))}"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise _fail(ann_file, f"{name} has no valid 'bbox' [x, y, w, h]")
        if ann.get("image_id") not in img_ids:
            raise _fail(ann_file, f"{name} refers to unknown image id {ann.get('image_id')}")
        if ann.get("category_id") not in cat_ids:
            raise _fail(ann_file, f"{name} has unknown category id {ann.get('category_id')} "
                                  f"(categories: {sorted(cat_ids)})")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset.

    Item ``i`` is ``(image, target)``: ``image`` uint8 [3, H, W] RGB at the stored size, ``target``
    ``{'boxes': float32 [K, 4] xyxy pixels, 'labels': int64 [K] category ids, 'image_id': int,
    'orig_size': (H, W), 'flip': bool}``. In training ``flip`` is True with probability ``flip_prob``: the image
    and boxes are handed out as stored and the detector flips them left-right *after* resizing, as MMDetection's
    pipeline does (Resize, then RandomFlip), so that flipped inputs are MMDetection's bit for bit (the integer
    resize is not mirror-symmetric). The decision is a function of (seed, epoch, index) only, so it does not
    depend on the number of loader workers or processes and a resumed run sees the same flips (call
    :meth:`set_epoch` every epoch).

    Args:
        img_dir: folder holding the images (``file_name`` is relative to it).
        ann_file: COCO instances JSON.
        train: training mode: drop images without usable boxes or smaller than ``min_image_size``, flip.
        flip_prob: probability of a horizontal flip; default 0.5 in training, 0 otherwise.
        seed: seed of the flip decisions.
        min_image_size: in training, images whose shorter side is below this are dropped (MMDetection: 32).
        bad_sample: what a missing or corrupt image does: ``'raise'`` a ValueError naming the file, or
            ``'skip'``: the item is replaced by the next readable one and ``target['skipped']`` lists the
            messages of the images passed over (the training loop counts them).
        ignore_orientation: read every image as stored, ignoring EXIF orientation tags (for annotations made
            on the stored pixels of square or mirrored images, which :func:`annotated_as_stored` cannot tell).

    Attributes:
        category_ids: the category ids, sorted. class_names: their names, same order.
        coco: the pycocotools ``COCO`` object. ids: the image ids kept, in item order.
        stats: counts of what was dropped or ignored while reading the annotations, and
            ``exif_orientation_ignored``: kept images read as stored because their annotation fits the stored
            pixels and not the upright ones (found from the image headers when the dataset is opened).
    """

    def __init__(self, img_dir: str | os.PathLike, ann_file: str | os.PathLike, *, train: bool,
                 flip_prob: float | None = None, seed: int = 0, min_image_size: int = 32,
                 bad_sample: str = "raise", ignore_orientation: bool = False) -> None:
        if bad_sample not in ("raise", "skip"):
            raise ValueError(f"bad_sample must be 'raise' or 'skip', got {bad_sample!r}")
        flip_prob = (0.5 if train else 0.0) if flip_prob is None else float(flip_prob)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise ValueError(f"image folder {self.img_dir}: "
                             f"{'not found' if not self.img_dir.exists() else 'not a directory'}")
        self.ann_file = Path(ann_file)
        self.coco = load_coco_json(self.ann_file, require_annotations=train)
        self.train, self.flip_prob, self.seed, self.bad_sample = train, flip_prob, seed, bad_sample
        self.ignore_orientation = bool(ignore_orientation)
        self.epoch = 0
        self.category_ids = tuple(sorted(self.coco.cats))
        self.class_names = tuple(str(self.coco.cats[c]["name"]) for c in self.category_ids)

        stats = dict(images=len(self.coco.imgs), crowd_boxes_ignored=0, small_boxes_dropped=0,
                     images_without_boxes_dropped=0, small_images_dropped=0)
        self.ids: list[int] = []
        self._boxes: dict[int, tuple[list[list[float]], list[int]]] = {}
        for img_id in sorted(self.coco.imgs):
            info = self.coco.imgs[img_id]
            boxes, labels = self._parse(info, self.coco.imgToAnns.get(img_id, []), stats)
            if train and min(info["width"], info["height"]) < min_image_size:
                stats["small_images_dropped"] += 1
                continue
            if train and not boxes:
                stats["images_without_boxes_dropped"] += 1
                continue
            self.ids.append(img_id)
            self._boxes[img_id] = (boxes, labels)
        stats["images_kept"] = len(self.ids)
        stats["exif_orientation_ignored"] = 0 if self.ignore_orientation else self._count_annotated_as_stored()
        self.stats = stats
        if train and not self.ids:
            raise ValueError(f"annotation file {self.ann_file}: no image has a usable box")
        logger.debug("%s: %s", self.ann_file, stats)

    def _count_annotated_as_stored(self) -> int:
        """How many kept images :func:`annotated_as_stored` reads as stored, from their headers. Unreadable files
        are not counted here: reading their pixels reports them (or skips them)."""
        def stored(img_id: int) -> bool:
            info = self.coco.imgs[img_id]
            try:
                height, width, orientation = image_header(self.img_dir / info["file_name"])
            except ValueError:
                return False
            return annotated_as_stored((height, width), orientation, (info["height"], info["width"]))

        if not self.ids:
            return 0
        with ThreadPoolExecutor(max_workers=min(_HEADER_THREADS, len(self.ids))) as pool:
            return sum(pool.map(stored, self.ids))

    @staticmethod
    def _parse(info: dict[str, Any], anns: list[dict[str, Any]], stats: dict[str, int]):
        """Usable boxes of one image, MMDetection's rules (boxes are not clipped)."""
        boxes, labels = [], []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            overlap_w = max(0.0, min(x + w, info["width"]) - max(x, 0.0))
            overlap_h = max(0.0, min(y + h, info["height"]) - max(y, 0.0))
            if ann.get("iscrowd", 0):
                stats["crowd_boxes_ignored"] += 1
                continue
            if overlap_w * overlap_h == 0 or w < 1 or h < 1 or ann.get("area", w * h) <= 0:
                stats["small_boxes_dropped"] += 1
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(ann["category_id"])
        return boxes, labels

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flip decisions :meth:`__getitem__` makes."""
        self.epoch = int(epoch)

    def image_path(self, index: int) -> Path:
        """The file of item ``index``."""
        return self.img_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def aspect_ratio_groups(self) -> list[int]:
        """Group of each item for aspect-ratio grouped batches: 1 if width > height, else 0 (MMDetection)."""
        return [int(self.coco.imgs[i]["width"] > self.coco.imgs[i]["height"]) for i in self.ids]

    def _load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = self.img_dir / info["file_name"]
        image, orientation = load_stored_image(path)
        annotated = (info["height"], info["width"])
        upright = not (self.ignore_orientation or annotated_as_stored(tuple(image.shape[1:]), orientation, annotated))
        if upright and orientation != 1:
            image = apply_orientation(image, orientation)
        if tuple(image.shape[1:]) != annotated:
            frame = f" (EXIF orientation {orientation} applied)" if upright and orientation != 1 else ""
            raise ValueError(f"image {path}: size {image.shape[2]}x{image.shape[1]}{frame} does not match the "
                             f"annotation's {info['width']}x{info['height']}")
        boxes, labels = self._boxes[img_id]
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64),
                  "image_id": int(img_id), "orig_size": (int(info["height"]), int(info["width"]))}
        target["flip"] = False
        if self.flip_prob > 0:
            # Seeded by (seed, epoch, index): independent of worker processes and of where a run resumed.
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
            target["flip"] = rng.random() < self.flip_prob
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.bad_sample == "raise":
            return self._load(index)
        skipped = []
        for offset in range(len(self.ids)):
            try:
                image, target = self._load((index + offset) % len(self.ids))
            except ValueError as err:
                skipped.append(str(err))
                continue
            target["skipped"] = skipped
            return image, target
        raise ValueError(f"image folder {self.img_dir}: no readable image ({skipped[0]})")


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Batch items as lists (images keep their own sizes; the model pads them).

    Returns:
        ``(images, targets)``: list of [3, H, W] tensors and list of target dicts.
    """
    images, targets = zip(*batch)
    return list(images), list(targets)
