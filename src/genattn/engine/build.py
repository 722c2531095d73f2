"""What train and test both build from a recipe: data paths, datasets, the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from genattn.data import CocoDetection
from genattn.recipes import Recipe

__all__ = ["coco_paths", "build_model", "check_categories", "seed_everything"]


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


def build_model(recipe: Recipe, *, category_ids: Sequence[int], class_names: Sequence[str]) -> torch.nn.Module:
    """The recipe's detector for a dataset's categories (``genattn.models.get_model``)."""
    from genattn.models import get_model  # imported here: the engine must stay importable without the zoo

    return get_model(recipe.model, num_classes=len(category_ids), category_ids=tuple(category_ids),
                     class_names=tuple(class_names), min_size=recipe.min_size, max_size=recipe.max_size,
                     backbone=dict(recipe.backbone) or None, pretrained_backbone=recipe.pretrained_backbone,
                     **recipe.model_kwargs)


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
