"""Training checkpoints: writing them, RNG state capture, finding the latest one, reading one to resume.

A training checkpoint is a genattn checkpoint (:func:`genattn.models.weights.genattn_record`: format, weights,
model config, classes) plus the training state, saved with ``torch.save`` and read back with
``weights_only=True`` through :func:`genattn.models.weights.read_checkpoint` (so it holds only tensors and plain
Python values)::

    {'format': 'genattn-checkpoint-v2', 'model': state_dict, 'config': ModelConfig, 'classes': {...},
     'optimizer': ..., 'scheduler': ..., 'scaler': ..., 'epoch': completed epochs, 'iter': completed
     iterations, 'iter_in_epoch': iterations done in the current epoch (0 at an epoch boundary; the batches
     to skip when resuming), 'bad_samples', 'nonfinite_skipped': counts so far,
     'recipe': Recipe.to_dict(), 'meta': {'world_size', 'iters_per_epoch', 'total_batch'},
     'rng': [per-rank RNG states], 'metrics': last evaluation or None}

Files are written to ``NAME.tmp`` and renamed over ``NAME`` only when complete, so an interrupted write never
leaves a half checkpoint; ``last_checkpoint`` (a one-line text file, written the same way) names the newest.
A run directory holds epoch checkpoints ``epoch_N.pth`` (N completed epochs) and mid-epoch checkpoints
``iter_N.pth`` (N completed iterations), of which :func:`prune_iter_checkpoints` keeps the newest few.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genattn.models.weights import atomic_save, atomic_write_text, read_checkpoint

__all__ = ["save_checkpoint", "load_training_checkpoint", "find_latest", "prune_iter_checkpoints", "rng_state",
           "set_rng_state"]

_TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "iter", "iter_in_epoch", "recipe", "rng")
_LAST = "last_checkpoint"
_ITER_FILE = re.compile(r"^iter_(\d+)\.pth$")


def rng_state() -> dict[str, Any]:
    """This process's random generator states (python, numpy, torch, and its current CUDA device's) as plain
    values and tensors. Only the process's own GPU: another machine may resume it with fewer GPUs visible."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (the CUDA state onto the current device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's state
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically and record it as the latest in its folder.

    Returns:
        The path written.
    """
    path = atomic_save(state, path)
    atomic_write_text(path.parent / _LAST, path.name + "\n")
    return path


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint to resume from (``weights_only=True``).

    Raises:
        ValueError: a missing or unreadable file, or not a genattn training checkpoint (one line naming it).
    """
    ckpt = read_checkpoint(path)
    missing = [k for k in _TRAINING_KEYS if k not in ckpt.content]
    if ckpt.kind != "genattn" or missing:
        raise ValueError(f"checkpoint {path}: not a genattn training checkpoint (use it as weights instead)")
    return ckpt.content


def find_latest(work_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run directory: the one ``last_checkpoint`` names, else the most recently
    modified ``*.pth``; None if there is none."""
    work_dir = Path(work_dir)
    marker = work_dir / _LAST
    if marker.is_file():
        candidate = work_dir / marker.read_text(encoding="utf-8").strip()
        if candidate.is_file():
            return candidate
    found = sorted(work_dir.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def prune_iter_checkpoints(work_dir: str | os.PathLike, keep: int, newest: int) -> list[Path]:
    """Delete the mid-epoch checkpoints ``iter_N.pth`` of a run directory but the ``keep`` newest.

    Only files with ``N <= newest`` (the iteration just saved) are considered: those of a later iteration are
    left from a run that was resumed from an earlier checkpoint, not older ones. Epoch checkpoints are never
    touched.

    Args:
        work_dir: the run directory.
        keep: how many to keep; -1 keeps all.
        newest: the iteration of the checkpoint just written.

    Returns:
        The files deleted.
    """
    if keep < 0:
        return []
    found = []
    for path in Path(work_dir).glob("iter_*.pth"):
        match = _ITER_FILE.match(path.name)
        if match and int(match.group(1)) <= newest:
            found.append((int(match.group(1)), path))
    doomed = [path for _, path in sorted(found)[:max(len(found) - keep, 0)]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
