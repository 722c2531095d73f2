"""What train and test both need: data paths and datasets, the dataset/model category check, seeding."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from genattn.data import CocoDetection
from genattn.models.classes import Classes

__all__ = ["DataFiles", "coco_paths", "training_datasets", "dataset_classes", "check_categories",
           "seed_everything"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFiles:
    """Where the data is: a COCO-layout root (splits from the recipe) and/or explicit files, which win."""

    root: str | os.PathLike | None = None
    train_ann: str | os.PathLike | None = None
    train_images: str | os.PathLike | None = None
    val_ann: str | os.PathLike | None = None
    val_images: str | os.PathLike | None = None


def coco_paths(data_root: str | os.PathLike | None, split: str, *, ann_file: str | os.PathLike | None = None,
               img_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Image folder and annotation file of a split in COCO's layout (``ROOT/SPLIT/`` and
    ``ROOT/annotations/instances_SPLIT.json``); explicit ``ann_file``/``img_dir`` win.

    Raises:
        ValueError: a missing data root, or neither a root nor the explicit path.
    """
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise ValueError(f"data root {root}: {'not found' if not root.exists() else 'not a directory'}")
    elif ann_file is None or img_dir is None:
        raise ValueError(f"split {split!r}: give a data root or both an annotation file and an image folder")
    img = Path(img_dir) if img_dir is not None else root / split
    ann = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}.json"
    return img, ann


def training_datasets(recipe, files: DataFiles) -> tuple[CocoDetection, CocoDetection | None]:
    """A run's training set and, unless the recipe never evaluates or there is none, its validation set;
    their statistics are logged."""
    img_dir, ann = coco_paths(files.root, recipe.train_split, ann_file=files.train_ann, img_dir=files.train_images)
    train_ds = CocoDetection(img_dir, ann, train=True, flip_prob=recipe.flip_prob, seed=recipe.seed,
                             bad_sample="skip")
    s = train_ds.stats
    logger.info("training set %s: %d images, %d kept (%d without usable boxes and %d smaller than 32 px "
                "dropped), %d crowd boxes ignored, %d boxes under 1 px or outside the image dropped, %d images "
                "read as stored (annotated without their EXIF orientation)", ann, s["images"], s["images_kept"],
                s["images_without_boxes_dropped"], s["small_images_dropped"], s["crowd_boxes_ignored"],
                s["small_boxes_dropped"], s["exif_orientation_ignored"])
    val_ds = None
    if recipe.eval_interval >= 0 and (files.root is not None or files.val_ann is not None):
        img_dir, ann = coco_paths(files.root, recipe.val_split, ann_file=files.val_ann, img_dir=files.val_images)
        val_ds = CocoDetection(img_dir, ann, train=False)
        if tuple(val_ds.category_ids) != tuple(train_ds.category_ids):
            raise ValueError(f"annotation file {ann}: categories differ from the training set's ({train_ds.ann_file})")
        logger.info("validation set %s: %d images, %d read as stored (annotated without their EXIF orientation)",
                    ann, len(val_ds), val_ds.stats["exif_orientation_ignored"])
    return train_ds, val_ds


def dataset_classes(dataset: CocoDetection) -> Classes:
    """The categories of a dataset, as a model's classes."""
    return Classes(tuple(dataset.category_ids), tuple(dataset.class_names))


def check_categories(model: torch.nn.Module, dataset: CocoDetection) -> None:
    """A model that declares its categories must have the dataset's (its labels are category ids)."""
    ids = getattr(model, "category_ids", None)
    if ids is not None and tuple(ids) != tuple(dataset.category_ids):
        def show(v):
            return str(list(v)) if len(v) <= 8 else f"[{', '.join(map(str, v[:8]))}, ...] ({len(v)} ids)"

        raise ValueError(f"annotation file {dataset.ann_file}: category ids {show(tuple(dataset.category_ids))} "
                         f"differ from the model's {show(tuple(ids))}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
