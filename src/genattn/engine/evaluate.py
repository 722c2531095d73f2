"""COCO box evaluation: run a detector over a dataset (sharded over ranks), gather, score with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from genattn.data import CocoDetection, ShardedSampler, collate
from genattn.engine import distributed as du
from genattn.engine.checkpoint import atomic_write_text
from genattn.engine.preemption import ignore_stop_signals

__all__ = ["evaluate", "coco_evaluate", "detections_to_coco", "format_metrics", "autocast", "METRIC_NAMES",
           "unwrap_loader_error"]

logger = logging.getLogger(__name__)

#: pycocotools' summary numbers, in the order of ``COCOeval.stats``.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, amp: str):
    """The autocast context of an ``amp`` setting ('none', 'bf16', 'fp16').

    Raises:
        ValueError: an unknown setting, or one the device cannot run: no autocast on that device type, bf16 on a
            GPU without bfloat16, or a dtype that PyTorch's autocast for the device would silently switch off.
    """
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp: expected one of none, {', '.join(_AMP_DTYPES)}; got {amp!r}")
    device = torch.device(device)
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"amp {amp!r}: PyTorch has no autocast for device type {device.type!r}")
    if device.type == "cuda" and amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"amp 'bf16': {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; use fp16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = torch.autocast(device.type, dtype=_AMP_DTYPES[amp])
    for w in caught:
        if "disabl" in str(w.message).lower():
            raise ValueError(f"amp {amp!r}: not supported on {device.type}: {str(w.message).strip()}")
    return context


def unwrap_loader_error(err: Exception) -> Exception:
    """A DataLoader worker's error re-raised in the main process carries the worker's whole traceback in its
    message; return an error of the same kind with only the original last line (our one-line messages)."""
    text = str(err)
    if "Original Traceback" not in text or not isinstance(err, ValueError):
        return err
    last = [line for line in text.splitlines() if line.strip()][-1]
    return ValueError(last.split(": ", 1)[1] if last.startswith("ValueError: ") else last)


def detections_to_coco(outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int]) -> list[dict]:
    """Model detections (xyxy boxes, scores, category-id labels) as COCO result entries (xywh boxes)."""
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, out["scores"].float().cpu().tolist(), out["labels"].cpu().tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


def coco_evaluate(coco_gt: COCO, results: list[dict], *, img_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Box AP of COCO results against ground truth, as pycocotools computes it.

    Args:
        coco_gt: ground truth.
        results: COCO result entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        img_ids: the images evaluated (default: all of ``coco_gt``); images without results count as misses.

    Returns:
        ``{'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}`` (floats in
        [0, 1], -1 where pycocotools has no ground truth for an area range) and ``'per_class'``: ``{class name:
        AP}`` (AP over IoU 0.5:0.95, all areas, 100 detections; NaN for a class without ground truth).
    """
    img_ids = sorted(coco_gt.getImgIds() if img_ids is None else img_ids)
    cat_ids = sorted(coco_gt.getCatIds())
    names = [str(coco_gt.cats[c]["name"]) for c in cat_ids]
    if not results:
        metrics: dict[str, Any] = {name: 0.0 for name in METRIC_NAMES}
        metrics["per_class"] = {name: 0.0 for name in names}
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets]; area 'all', 100 dets.
    precision = ev.eval["precision"]
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else float("nan")
    metrics["per_class"] = per_class
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A summary line and a per-class AP table, for logs."""
    head = " ".join(f"{k}={metrics[k]:.3f}" for k in METRIC_NAMES[:6] if k in metrics)
    per_class = metrics.get("per_class", {})
    if not per_class:
        return head
    width = max(8, max(len(n) for n in per_class))
    rows = [f"{'class':<{width}}  AP", "-" * (width + 8)]
    rows += [f"{name:<{width}}  {ap:.3f}" for name, ap in per_class.items()]
    return head + "\n" + "\n".join(rows)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: CocoDetection, *, batch_size: int = 1, num_workers: int = 0,
             device: torch.device | str | None = None, amp: str = "none", out_file: str | os.PathLike | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Detect on every image of ``dataset`` and compute COCO box AP.

    Under torch.distributed each rank runs every ``world_size``-th image; the detections are gathered on rank 0,
    which scores them (and writes ``out_file``); the metrics are then sent to every rank.

    Args:
        model: a detector following genattn's call convention (eval mode: ``model(images) -> [{'boxes',
            'scores', 'labels'}]``); a DDP wrapper is unwrapped. Its train/eval mode is restored afterwards.
        dataset: the evaluation set (``train=False``); its ``coco`` object is the ground truth.
        batch_size: images per forward pass (MMDetection tests with 1).
        num_workers: loader processes.
        device: where to run (default: the model's device).
        amp: 'none', 'bf16' or 'fp16' autocast.
        out_file: where to write the detections as a COCO results JSON (rank 0).
        progress: show a progress bar on rank 0.

    Returns:
        The metrics of :func:`coco_evaluate` plus ``'num_images'`` and ``'num_detections'`` (empty metrics when
        the annotation file has no annotations, e.g. COCO test-dev: only the results file is produced).
    """
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    sampler = ShardedSampler(len(dataset))
    # Pinned batches make the non_blocking copies below asynchronous on CUDA; pinning needs an accelerator.
    # The workers ignore SIGTERM as the training loader's do: a scheduler's SIGTERM during a training run's
    # evaluation must reach the training process's handler (checkpoint, exit 75), not kill the workers under it.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=num_workers, generator=torch.Generator(),
                                         pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    results: list[dict] = []
    bar = None
    if progress and du.is_main_process():
        from tqdm import tqdm
        bar = tqdm(total=len(sampler), desc="eval", unit="img", dynamic_ncols=True)
    try:
        for images, targets in loader:
            with autocast(device, amp):
                outputs = net([im.to(device, non_blocking=True) for im in images])
            results += detections_to_coco(outputs, [t["image_id"] for t in targets])
            if bar is not None:
                bar.update(len(images))
    except ValueError as err:
        raise unwrap_loader_error(err) from None
    finally:
        if bar is not None:
            bar.close()
        net.train(was_training)
    gathered = du.all_gather_object(results)
    metrics: dict[str, Any] = {}
    if du.is_main_process():
        results = [r for part in gathered for r in part]
        if out_file is not None:
            Path(out_file).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_file, json.dumps(results))
        if dataset.coco.anns:
            metrics = coco_evaluate(dataset.coco, results, img_ids=dataset.ids)
        else:
            logger.warning("%s has no annotations: wrote detections only", dataset.ann_file)
        metrics.update(num_images=len(dataset), num_detections=len(results))
    return du.broadcast_object(metrics)
