"""Evaluate a checkpoint on a COCO-format dataset: ours (from :func:`genattn.engine.train.train`) or a released
MMDetection one (converted by ``genattn.models.zoo``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from genattn.data import CocoDetection
from genattn.engine import distributed as du
from genattn.engine.build import build_model, check_categories, coco_paths
from genattn.engine.checkpoint import FORMAT, load_checkpoint
from genattn.engine.evaluate import evaluate, format_metrics
from genattn.engine.runlog import run_logging
from genattn.recipes import Recipe, get_recipe

__all__ = ["test"]

logger = logging.getLogger(__name__)


def test(checkpoint: str | os.PathLike, *, model_name: str | None = None, recipe: Recipe | None = None,
         data_root: str | os.PathLike | None = None, ann_file: str | os.PathLike | None = None,
         img_dir: str | os.PathLike | None = None, split: str | None = None,
         out_file: str | os.PathLike | None = None, batch_size: int = 1, workers: int = 2,
         device: str = "auto", amp: str = "none", progress: bool = True) -> dict[str, Any]:
    """Load a detector from a checkpoint and compute its COCO box AP; works alone and under ``torchrun``.

    A genattn checkpoint carries its recipe (model name, backbone overrides, image size) and categories, so
    ``checkpoint`` alone rebuilds the model. Any other file or URL is handed to ``genattn.models.zoo``
    (MMDetection checkpoints); the model is then ``model_name`` (or ``recipe.model``) with the dataset's categories.

    Args:
        checkpoint: path (or, for zoo weights, URL) of the weights.
        model_name: model to build for a non-genattn checkpoint; for ours it must match if given.
        recipe: overrides the checkpoint's recipe (image size etc.); default: the checkpoint's, or the 1x recipe
            of ``model_name``.
        data_root, ann_file, img_dir, split: the data (COCO layout; ``split`` defaults to the recipe's
            ``val_split``, e.g. val2017); explicit files win.
        out_file: COCO results JSON to write; default ``<checkpoint stem>_<split>.bbox.json`` next to a local
            checkpoint, else in the current folder.
        batch_size, workers, device, amp: evaluation settings (MMDetection tests with batch 1).
        progress: progress bar on rank 0.

    Returns:
        The metrics of :func:`genattn.engine.evaluate.evaluate` plus ``'results_file'``.
    """
    dev, created_group = du.init_distributed(device)
    try:
        with run_logging(None, du.get_rank()):
            return _test(checkpoint, model_name, recipe, data_root, ann_file, img_dir, split, out_file, batch_size,
                         workers, dev, amp, progress)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _test(checkpoint, model_name, recipe, data_root, ann_file, img_dir, split, out_file, batch_size, workers, dev,
          amp, progress):
    ckpt = None
    is_url = "://" in str(checkpoint)
    if not is_url:
        ckpt = load_checkpoint(checkpoint)
        if ckpt.get("format") != FORMAT:
            ckpt = None
    if ckpt is not None:
        saved = Recipe.from_dict(ckpt["recipe"])
        if model_name is not None and model_name != saved.model:
            raise ValueError(f"checkpoint {checkpoint}: holds {saved.model}, not {model_name}")
        recipe = recipe or saved
    elif recipe is None:
        if model_name is None:
            raise ValueError(f"checkpoint {checkpoint}: not a genattn checkpoint; name the model it holds")
        recipe = get_recipe(model_name)

    split = split or recipe.val_split
    images, ann = coco_paths(data_root, split, ann_file=ann_file, img_dir=img_dir)
    dataset = CocoDetection(images, ann, train=False)
    if ckpt is not None:
        ids, names = ckpt["meta"]["category_ids"], ckpt["meta"]["class_names"]
    else:
        ids, names = dataset.category_ids, dataset.class_names
    # The checkpoint supplies every weight: no ImageNet initialisation (and no download) first.
    model = build_model(recipe.replace(pretrained_backbone=None), category_ids=ids, class_names=names)
    check_categories(model, dataset)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    else:
        try:
            from genattn.models.zoo import load_weights
        except ImportError:
            raise ValueError(f"checkpoint {checkpoint}: not a genattn checkpoint, and genattn.models.zoo (which "
                             f"reads MMDetection checkpoints) is not available") from None
        load_weights(model, str(checkpoint))
    model.to(dev)

    if out_file is None:
        stem = f"{Path(str(checkpoint)).stem}_{split}.bbox.json"
        out_file = Path(checkpoint).parent / stem if not is_url else Path(stem)
    logger.info("testing %s (%s) on %s: %d images, %d read as stored (annotated without their EXIF orientation)",
                checkpoint, recipe.model, ann, len(dataset), dataset.stats["exif_orientation_ignored"])
    metrics = evaluate(model, dataset, batch_size=batch_size, num_workers=workers, device=dev, amp=amp,
                       out_file=out_file, progress=progress)
    if metrics.get("per_class"):
        logger.info("%s", format_metrics(metrics))
    logger.info("detections written to %s", out_file)
    return {**metrics, "results_file": str(out_file)}
