"""Training checkpoints: atomic writes, RNG state capture, finding the latest one.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (so it holds only
tensors and plain Python values)::

    {'format': 'genattn-checkpoint-v1', 'model': state_dict, 'optimizer': ..., 'scheduler': ..., 'scaler': ...,
     'epoch': completed epochs, 'iter': completed iterations, 'iter_in_epoch': iterations done in the current
     epoch (0 at an epoch boundary), 'recipe': Recipe.to_dict(), 'meta': {'category_ids', 'class_names',
     'world_size', ...}, 'rng': [per-rank RNG states], 'metrics': last evaluation or None}

Files are written to ``NAME.tmp`` and renamed over ``NAME`` only when complete, so an interrupted write never
leaves a half checkpoint; ``last_checkpoint`` (a one-line text file, written the same way) names the newest.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT", "atomic_torch_save", "save_checkpoint", "load_checkpoint", "find_latest", "rng_state",
           "set_rng_state", "atomic_write_text"]

FORMAT = "genattn-checkpoint-v1"
_LAST = "last_checkpoint"


def rng_state() -> dict[str, Any]:
    """This process's random generator states (python, numpy, torch, cuda) as plain values and tensors."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see either the old or the new content, never a part."""
    _atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` so that ``path`` holds either its old content or all of ``obj``, never a part."""
    path = Path(path)
    _atomic(path, lambda f: torch.save(obj, f))
    return path


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically and record it as the latest in its folder.

    Returns:
        The path written.
    """
    path = atomic_torch_save(state, path)
    atomic_write_text(path.parent / _LAST, path.name + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        ValueError: missing or unreadable file (one line naming it and the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...: one line, not a traceback
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path}: cannot read ({reason[:200]})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path}: not a checkpoint dict")
    return ckpt


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
