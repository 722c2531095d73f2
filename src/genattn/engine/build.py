"""What train and test both need: data paths, the dataset/model category check, seeding."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from genattn.data import CocoDetection
from genattn.models.classes import Classes

__all__ = ["coco_paths", "dataset_classes", "check_categories", "seed_everything"]


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
