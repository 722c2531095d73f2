"""Run logs: a JSON-lines file with MMDetection's ``log.json`` fields, and optionally TensorBoard.

Train lines: ``{"mode": "train", "epoch": e (1-based), "iter": i (1-based, within the epoch), "lr", "memory"
(MB: CUDA peak allocated, or the process's peak resident size on CPU), "data_time", "time" (s/iter, means over
the interval), "loss_rpn_cls", ..., "loss"}``. Validation lines: ``{"mode": "val", "epoch", "iter", "lr",
"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l"}``.

A resumed run appends to the same file after :func:`drop_records_after` has removed what the stopped run logged
past its checkpoint, so that every iteration appears once, as in an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["JsonLogger", "drop_records_after", "memory_mb", "reset_peak_memory", "VAL_KEYS"]

logger = logging.getLogger(__name__)

#: Our metric names -> MMDetection's log.json names.
VAL_KEYS = {"AP": "bbox_mAP", "AP50": "bbox_mAP_50", "AP75": "bbox_mAP_75", "APs": "bbox_mAP_s",
            "APm": "bbox_mAP_m", "APl": "bbox_mAP_l"}


def reset_peak_memory(device: torch.device) -> None:
    """Start :func:`memory_mb`'s CUDA peak afresh (a run's log then shows its own peak, not that of an earlier
    run in the same process, e.g. ``genattn study``'s previous model). The CPU's peak resident set cannot be
    reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_mb(device: torch.device) -> int:
    """Peak memory in MB: CUDA allocated on a GPU (since :func:`reset_peak_memory`), else the process's peak
    resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) / 2**20)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return int(peak / (2**20 if sys.platform == "darwin" else 2**10))


def drop_records_after(path: str | os.PathLike, iters_per_epoch: int, last_iter: int) -> int:
    """Remove from the log file ``path`` the train and val records of iterations after ``last_iter``.

    A record's iteration is ``(epoch - 1) * iters_per_epoch + iter``; ``iters_per_epoch`` and ``last_iter`` are
    those of the run that wrote the records (a checkpoint's). A torn last line (a kill while it was written) is
    removed too; other lines are kept as they are. The file is replaced atomically, and only if something is
    removed. Returns the number of lines removed.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, dropped = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            if not line.endswith("\n"):  # the last line, torn by a kill while it was written
                dropped += 1
                continue
            record = None
        try:
            position = (int(record["epoch"]) - 1) * iters_per_epoch + int(record["iter"])
        except (ValueError, TypeError, KeyError):  # not a record of an iteration: keep it
            kept.append(line)
            continue
        if position > last_iter:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class JsonLogger:
    """Appends records to ``work_dir/log.json`` (one JSON object per line) and mirrors scalars to TensorBoard.

    Args:
        work_dir: run directory.
        tensorboard: also write TensorBoard events to ``work_dir/tensorboard``; if the ``tensorboard`` package
            is missing a warning says so and the run goes on without it.
        enabled: False on non-zero ranks (nothing is written).
    """

    def __init__(self, work_dir: str | os.PathLike, *, tensorboard: bool = False, enabled: bool = True) -> None:
        self.path = Path(work_dir) / "log.json"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("TensorBoard logging was requested but the 'tensorboard' package is not "
                               "installed (pip install tensorboard); logging to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(Path(work_dir) / "tensorboard"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        """Write one record; numbers also go to TensorBoard under ``mode/key`` at ``step``."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and step is not None:
            mode = record.get("mode", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iter"):
                    self.writer.add_scalar(f"{mode}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
