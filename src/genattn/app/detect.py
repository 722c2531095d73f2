"""``genattn detect``: run a detector over image files, folders and glob patterns, in batches.

Inputs expand in order: a folder gives the images directly inside it (by suffix, sorted by name), a pattern with
``*``, ``?`` or ``[`` gives its matches (sorted; ``**`` searches subfolders), anything else is one file. An input
that names nothing (a missing file, an empty folder, a pattern without matches) is an error before any image
is read. An image that cannot be read is reported on stderr and skipped (``strict=True``: an error).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from genattn.app.pictures import class_names, draw_detections, load_image
from genattn.engine.evaluate import autocast

__all__ = ["IMAGE_SUFFIXES", "image_files", "detect_images"]

#: Suffixes (lower case) taken from a folder; files named one by one or by a pattern may have any suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_PROGRESS_FROM = 5  # a progress bar from this many images on


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files that ``inputs`` (files, folders, glob patterns) name, in order, each once.

    Raises:
        FileNotFoundError: an input names no file (one line naming it).
    """
    files: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        elif not path.exists() and glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no files match {text}")
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"image not found: {path}")
        files.extend(found)
    return list(dict.fromkeys(files))


def _entries(index: int, path: Path, det: dict[str, torch.Tensor], names: dict[int, str]) -> list[dict]:
    entries = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        x0, y0, x1, y1 = box
        entries.append({"image_id": index, "file_name": str(path), "category_id": int(label),
                        "category": names.get(int(label), str(label)),
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 4)})
    return entries


@torch.inference_mode()
def detect_images(model: torch.nn.Module, paths: Sequence[Path], out_dir: Path, *, score_thr: float = 0.3,
                  ignore_orientation: bool = False, batch_size: int = 1, amp: str = "none", strict: bool = False,
                  pictures: bool = True, progress: bool | None = None) -> dict[str, Any]:
    """Run ``model`` on image files; write ``detections.json`` and ``<stem>_det.png`` per image in ``out_dir``.

    The JSON is a COCO results list (``image_id`` = position in ``paths``, ``file_name``, ``category_id``,
    ``category``, ``bbox`` [x, y, w, h], ``score``) holding every detection the model returned. Images are turned
    upright by their EXIF orientation (boxes and pictures are in that frame) unless ``ignore_orientation``.
    Pictures of images smaller than 512 pixels are enlarged by an integer factor; two images with the same
    name get the second's position appended to its picture's name.

    Args:
        batch_size: images per ``model(images)`` call. A batch is padded to its largest image, so images of
            different sizes can get slightly different detections than alone (as in MMDetection).
        amp: ``'none'``, ``'bf16'`` or ``'fp16'``: autocast (see :func:`genattn.engine.evaluate.autocast`).
        strict: an unreadable image is an error (default: reported on stderr and skipped).
        pictures: write the PNGs.
        progress: a progress bar on stderr (default: from 5 images on).

    Returns:
        ``{'json': Path, 'images': [{'file', 'png', 'detections'}], 'skipped': [{'file', 'error'}]}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    device = next(model.parameters()).device
    model.eval()
    names = class_names(model)
    autocast(device, amp)  # an amp the device cannot run is an error before any image is read
    out_dir.mkdir(parents=True, exist_ok=True)
    results, per_image, skipped, stems = [], [], [], set()
    show = len(paths) >= _PROGRESS_FROM if progress is None else progress
    bar = tqdm(total=len(paths), desc="detect", unit="img", file=sys.stderr, disable=not show)
    with bar:
        for start in range(0, len(paths), batch_size):
            batch = []
            for index in range(start, min(start + batch_size, len(paths))):
                try:
                    batch.append((index, *load_image(paths[index], ignore_orientation=ignore_orientation)))
                except (ValueError, OSError) as e:
                    if strict:
                        raise
                    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    skipped.append({"file": str(paths[index]), "error": message})
                    bar.write(f"genattn detect: skipped {paths[index]}: {message}", file=sys.stderr)
            if batch:
                with autocast(device, amp):
                    dets = model([tensor.to(device) for _, _, tensor in batch])
                for (index, pil, _), det in zip(batch, dets):
                    det = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in det.items()}
                    path = paths[index]
                    entries = _entries(index, path, det, names)
                    png = None
                    if pictures:
                        stem = path.stem if path.stem not in stems else f"{path.stem}_{index}"
                        stems.add(stem)
                        png = out_dir / f"{stem}_det.png"
                        scale = max(1, 512 // max(pil.size))  # enlarge small images so that labels stay readable
                        draw_detections(pil, det, names, score_thr=score_thr, scale=scale).save(png)
                    results.extend(entries)
                    per_image.append({"file": str(path), "png": png, "detections": entries})
            bar.update(min(batch_size, len(paths) - start))
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    return {"json": json_path, "images": per_image, "skipped": skipped}
