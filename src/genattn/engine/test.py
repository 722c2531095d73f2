"""Evaluate a checkpoint on a COCO-format dataset: ours (from :func:`genattn.engine.train.train` or
``genattn convert``) or a released MMDetection one, read by :mod:`genattn.models.weights`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from genattn.data import CocoDetection
from genattn.engine import distributed as du
from genattn.engine.build import check_categories, coco_paths, dataset_classes
from genattn.engine.evaluate import evaluate, format_metrics
from genattn.engine.runlog import run_logging
from genattn.models.config import ModelConfig
from genattn.models.weights import is_url, load_model, read_checkpoint

__all__ = ["test"]

logger = logging.getLogger(__name__)


def test(checkpoint: str | os.PathLike, *, model: str | ModelConfig | None = None,
         changes: Mapping[str, Any] | Sequence[str] = (), impl: str | None = None, data_root: str | os.PathLike | None = None,
         ann_file: str | os.PathLike | None = None, img_dir: str | os.PathLike | None = None,
         split: str = "val2017", out_file: str | os.PathLike | None = None, batch_size: int = 1,
         workers: int = 2, device: str = "auto", amp: str = "none", compile: bool = False,
         progress: bool = True) -> dict[str, Any]:
    """Load a detector from a checkpoint and compute its COCO box AP; works alone and under ``torchrun``.

    The checkpoint says which model it holds (a genattn file records it, an MMDetection file's config text
    describes it, a released file's name names it); ``model`` names it where the file cannot, and must agree
    with the file otherwise. A genattn checkpoint's categories must be the dataset's; any other file predicts
    the dataset's categories.

    Args:
        checkpoint: path or URL of the weights.
        model: a model name or configuration (a :class:`~genattn.engine.recipes.Recipe` is one).
        changes: changes to the model's settings (e.g. ``{'heads': {'box_score_thresh': 0.01}}``,
            ``['min_size=600']``).
        impl: the attention path of every attention block (see ``ModelConfig.with_impl``).
        data_root, ann_file, img_dir, split: the data (COCO layout, ``split`` default val2017); explicit
            files win.
        out_file: COCO results JSON to write; default ``<checkpoint stem>_<split>.bbox.json`` next to a local
            checkpoint, else in the current folder.
        batch_size, workers, device, amp: evaluation settings (MMDetection tests with batch 1).
        compile: run the detector through ``torch.compile`` (the first image compiles; the second image size
            recompiles with dynamic sizes, later sizes reuse that graph).
        progress: progress bar on rank 0.

    Returns:
        The metrics of :func:`genattn.engine.evaluate.evaluate` plus ``'results_file'``.
    """
    dev, created_group = du.init_distributed(device)
    try:
        with run_logging(None, du.get_rank()):
            images, ann = coco_paths(data_root, split, ann_file=ann_file, img_dir=img_dir)
            dataset = CocoDetection(images, ann, train=False)
            ckpt = read_checkpoint(checkpoint, progress=progress and du.is_main_process())
            classes = None if ckpt.kind == "genattn" else dataset_classes(dataset)
            net, config = load_model(model, ckpt, changes=changes, impl=impl, classes=classes, device=dev)
            check_categories(net, dataset)
            if out_file is None:
                stem = f"{Path(str(checkpoint)).stem}_{split}.bbox.json"
                out_file = Path(checkpoint).parent / stem if not is_url(checkpoint) else Path(stem)
            logger.info("testing %s (%s) on %s: %d images, %d read as stored (annotated without their EXIF "
                        "orientation)", checkpoint, config.name, ann, len(dataset),
                        dataset.stats["exif_orientation_ignored"])
            metrics = evaluate(torch.compile(net) if compile else net, dataset, batch_size=batch_size,
                               num_workers=workers, device=dev, amp=amp, out_file=out_file, progress=progress)
            if metrics.get("per_class"):
                logger.info("%s", format_metrics(metrics))
            logger.info("detections written to %s", out_file)
            return {**metrics, "results_file": str(out_file)}
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
