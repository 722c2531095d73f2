"""The built-in "shapes" dataset: procedurally generated COCO-format detection data.

Every command of genattn can run with no download because this module draws a small detection dataset on
first use and caches it: six shape classes (circle, square, triangle, star, cross, ring) of varied size,
rotation and colour, partly occluding each other, on cluttered backgrounds (colour gradients, noise and
distractor strokes and blobs that belong to no class). The files follow COCO 2017's layout, so the same
directory works with ``genattn train/test --data ROOT`` like real COCO::

    ROOT/train2017/000000000001.jpg ...
    ROOT/val2017/000000000001.jpg ...
    ROOT/annotations/instances_train2017.json, instances_val2017.json
    ROOT/COMPLETE                     (written last; holds the generation parameters)

Generation is deterministic: image ``i`` of a split is drawn from its own ``numpy`` generator seeded by
``(seed, split, i)``, so the same parameters give the same bytes and annotations on every run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "ShapesPaths", "ensure_shapes_dataset", "default_cache_dir", "generate_image",
           "data_root"]

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
VERSION = "shapes-v1"
_REVISION = 2  # of the drawing code; a cached dataset of another revision is regenerated
_MARKER = "COMPLETE"
_DEFAULTS = {"seed": 0, "num_train": 480, "num_val": 120, "image_size": 128}
_SPLIT_KEYS = {"train": 0, "val": 1}


class ShapesPaths(NamedTuple):
    """Where the generated dataset lives (COCO 2017 layout)."""

    root: Path
    train_images: Path
    train_ann: Path
    val_images: Path
    val_ann: Path


def default_cache_dir() -> Path:
    """The cache root: ``$GENATTN_CACHE`` if set, otherwise ``~/.cache/genattn``."""
    env = os.environ.get("GENATTN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genattn"


def data_root(root: str | os.PathLike) -> Path:
    """A COCO-layout data root; ``'shapes'`` names the built-in dataset (generated on first use).

    Raises:
        FileNotFoundError: the directory does not exist.
    """
    if str(root) == "shapes":
        return ensure_shapes_dataset().root
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    return Path(root)


def _paths(root: Path) -> ShapesPaths:
    return ShapesPaths(root, root / "train2017", root / "annotations" / "instances_train2017.json",
                       root / "val2017", root / "annotations" / "instances_val2017.json")


def ensure_shapes_dataset(root: str | os.PathLike | None = None, *, seed: int = _DEFAULTS["seed"],
                          num_train: int = _DEFAULTS["num_train"], num_val: int = _DEFAULTS["num_val"],
                          image_size: int = _DEFAULTS["image_size"]) -> ShapesPaths:
    """Return the shapes dataset's paths, generating it first if it is not cached yet.

    Args:
        root: directory to hold the dataset. Default: ``<cache>/shapes-v1`` for the default parameters and
            ``<cache>/shapes-v1-s{seed}-n{train}-{val}-p{size}`` otherwise, ``<cache>`` being
            :func:`default_cache_dir`.
        seed: seed of the generator; the same seed gives the same files.
        num_train: number of training images (>= 1).
        num_val: number of validation images (>= 1).
        image_size: side of the square images in pixels (>= 32).

    Returns:
        The paths of the image folders and annotation files.

    Raises:
        ValueError: a bad parameter, or ``root`` holds something else (another dataset's files or a shapes
            dataset generated with other parameters).
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("image_size", image_size, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = {"version": VERSION, "revision": _REVISION, "seed": seed, "num_train": num_train, "num_val": num_val,
              "image_size": image_size}
    in_cache = root is None
    if root is None:
        is_default = all(params[k] == v for k, v in _DEFAULTS.items())
        name = VERSION if is_default else f"{VERSION}-s{seed}-n{num_train}-{num_val}-p{image_size}"
        root = default_cache_dir() / name
    root = Path(root).expanduser()
    found = _read_marker(root)
    if found is not None and found != params and in_cache:
        shutil.rmtree(root)  # our cache, from an older revision of this module
        found = None
    if found is not None:
        if found != params:
            raise ValueError(f"{root} holds a shapes dataset generated with {found}, not {params}; "
                             "pass another root")
        return _paths(root)
    if root.exists() and any(root.iterdir()):
        # A directory without the marker is a half-written dataset of ours (rebuild it) or somebody else's
        # files (never delete those).
        ours = {p.name for p in root.iterdir()} <= {"train2017", "val2017", "annotations"}
        if not ours:
            raise ValueError(f"{root} exists and is not a shapes dataset; pass an empty or new directory")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temporary directory and rename it into place, so that an interrupted run never
    # leaves a directory that looks complete, and concurrent processes (e.g. torchrun ranks) do not collide.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(tmp, split, count, seed=seed, image_size=image_size)
        (tmp / _MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
        try:
            if root.exists():
                root.rmdir()  # empty directory left by the caller
            os.replace(tmp, root)
        except OSError:
            # Another process finished first; use its result if it is the same dataset.
            if _read_marker(root) != params:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(root)


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_split(root: Path, split: str, count: int, *, seed: int, image_size: int) -> None:
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        rng = np.random.default_rng([seed, _SPLIT_KEYS[split], index])
        image, objects = generate_image(rng, image_size)
        image.save(img_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]
    coco = {"info": {"description": f"genattn {VERSION} synthetic shapes, split {split}, seed {seed}",
                     "version": VERSION},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
        json.dump(coco, f)


# --------------------------------------------------------------------------------------------------------
# Drawing


def _regular_polygon(n: int, radius: float, angle: float) -> np.ndarray:
    t = angle + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(radius: float, angle: float) -> np.ndarray:
    t = angle + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(radius: float, angle: float) -> np.ndarray:
    a, b = radius, radius * 0.33  # arm half-length, arm half-width
    pts = np.array([(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
                    (-b, b), (-b, a)], dtype=np.float64)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_outline(label: int, radius: float, angle: float) -> tuple[np.ndarray, float]:
    """The shape's outline (polygon [P, 2], centred at 0) and its area in pixels."""
    name = CLASS_NAMES[label]
    if name in ("circle", "ring"):
        pts = _regular_polygon(32, radius, 0.0)
        area = math.pi * radius ** 2 * (1.0 if name == "circle" else 1 - 0.55 ** 2)
        return pts, area
    if name == "square":
        pts = _regular_polygon(4, radius, angle)
    elif name == "triangle":
        pts = _regular_polygon(3, radius, angle)
    elif name == "star":
        pts = _star(radius, angle)
    else:
        pts = _cross(radius, angle)
    x, y = pts[:, 0], pts[:, 1]
    return pts, 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float [size, size, 3] background: a colour gradient plus noise."""
    c0, c1 = rng.uniform(0, 200, 3), rng.uniform(0, 200, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    return img + rng.normal(0, rng.uniform(2, 12), (size, size, 3))


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    # Shapes must stand out from the background behind them, or the task would be ill-posed.
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - avoid) > 90:
            break
    return tuple(int(v) for v in colour)


def _distractors(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Clutter that belongs to no class: strokes, dots and irregular blobs."""
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        if kind == 0:  # a stroke
            pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:  # a small dot
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(1, size * 0.03)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:  # a small jagged blob, smaller than any object and unlike any class
            cx, cy = rng.uniform(0, size, 2)
            n = int(rng.integers(7, 12))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            r = rng.uniform(size * 0.01, size * 0.05, n)
            draw.polygon([(float(cx + a * math.cos(b)), float(cy + a * math.sin(b))) for a, b in zip(r, t)],
                         fill=colour)


def generate_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict]]:
    """Draw one image and its objects.

    Args:
        rng: the generator that decides everything about this image.
        size: image side in pixels.

    Returns:
        The RGB image and its COCO annotations without ``id``/``image_id`` (``bbox`` [x, y, w, h] inside the
        image, ``area``, ``category_id`` 1..6, ``iscrowd`` 0, ``segmentation`` the outline polygon).
    """
    base = _background(rng, size)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _distractors(rng, draw, size)
    objects: list[dict] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(10):
            label = int(rng.integers(0, len(CLASS_NAMES)))
            # 23-67 px across at 128 px: large enough for the detectors' smallest anchors (32 px at stride 4).
            radius = rng.uniform(0.09, 0.26) * size
            outline, area = _shape_outline(label, radius, rng.uniform(0, 2 * math.pi))
            lo, hi = outline.min(0), outline.max(0)
            if CLASS_NAMES[label] in ("circle", "ring"):
                lo, hi = np.full(2, -radius), np.full(2, radius)  # the drawn circle, not its 32-gon
            centre = rng.uniform(-lo, size - hi)  # keeps the whole shape inside the image
            pts = outline + centre
            box = np.concatenate([lo + centre, hi + centre])
            if all(_covered_fraction(b, box) < 0.35 for b in boxes):
                break
        else:
            continue  # no room left for another object
        cx, cy = (int(v) for v in np.clip(centre, 0, size - 1))
        colour = _distinct_colour(rng, base[cy, cx])
        if CLASS_NAMES[label] == "ring":
            draw.ellipse([*(centre - radius), *(centre + radius)], outline=colour, width=max(2, round(radius * 0.45)))
        else:
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=colour)
        boxes.append(box)
        x0, y0 = (round(max(float(v), 0.0), 2) for v in box[:2])
        x1, y1 = (round(min(float(v), size), 2) for v in box[2:])
        objects.append({"category_id": label + 1, "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "area": round(area, 2), "iscrowd": 0,
                        "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]]})
    return image, objects


def _covered_fraction(old: np.ndarray, new: np.ndarray) -> float:
    """Fraction of box ``old`` that box ``new`` would cover (occlusion of an earlier object)."""
    w = min(old[2], new[2]) - max(old[0], new[0])
    h = min(old[3], new[3]) - max(old[1], new[1])
    if w <= 0 or h <= 0:
        return 0.0
    return float(w * h / ((old[2] - old[0]) * (old[3] - old[1])))
