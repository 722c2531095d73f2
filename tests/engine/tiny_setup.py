"""Tiny COCO-format data and tiny models for the engine tests (CPU, seconds). A plain module with a unique
name (not conftest.py) so that ``from tiny_setup import ...`` cannot pick up another folder's conftest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genattn.engine.recipes import TINY_BACKBONE, Recipe

# Non-contiguous category ids on purpose: labels are category ids end to end.
CATEGORIES = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}]
COLOURS = {3: (220, 40, 40), 7: (40, 60, 220)}


def make_coco(root: Path, split: str, num_images: int, *, seed: int = 0, size: tuple[int, int] = (64, 64)):
    """Write ``num_images`` PNGs (one or two coloured rectangles on grey) and their instances JSON."""
    rng = np.random.default_rng(seed)
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    width, height = size
    images, anns = [], []
    for i in range(num_images):
        pixels = np.full((height, width, 3), 128, np.uint8)
        for _ in range(1 + i % 2):
            cat = int(rng.choice([3, 7]))
            w, h = (int(v) for v in rng.integers(24, 44, size=2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y:y + h, x:x + w] = COLOURS[cat]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        name = f"{i + 1:06d}.png"
        Image.fromarray(pixels).save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return img_dir, ann_file


def tiny_recipe(model: str = "faster_rcnn_r50_fpn_attention_0010_1x_coco", **changes) -> Recipe:
    """The real model at its smallest: tiny ResNet (frozen BatchNorm statistics: batches of 2 images are too
    small to normalise with), 64-96 px, 128 RoIs per image, a short warmup, no loader workers."""
    base = Recipe.from_name(model, min_size=64, max_size=96, imgs_per_gpu=2, base_lr=0.02, base_batch_size=2,
                            warmup_iters=2, epochs=2, lr_steps=(), workers=0, log_interval=1, device="cpu", seed=0)
    return base.replace(backbone={**TINY_BACKBONE, "norm_eval": True},
                        heads={"fpn_channels": 32, "representation_size": 64, "box_batch_size_per_image": 128},
                        **changes)


class ToyDetector(torch.nn.Module):
    """A deterministic stand-in with the detector call convention (no random sampling, no BatchNorm), for
    checks that need exact equality (DDP vs one process): predicts one box per image from pooled pixels."""

    def __init__(self, category_ids=(3, 7)):
        super().__init__()
        self.category_ids = tuple(category_ids)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.box = torch.nn.Linear(8, 4)
        self.cls = torch.nn.Linear(8, len(category_ids))

    def _features(self, images):
        # The dataset gives uint8 images; the real detector's transform normalises them, this one scales.
        return torch.stack([self.conv(im[None].float() / 255).relu().mean((2, 3))[0] for im in images])  # [N, 8]

    def forward(self, images, targets=None):
        feats = self._features(images)
        boxes = self.box(feats).sigmoid() * 64
        logits = self.cls(feats)
        if self.training:
            ids = torch.tensor(self.category_ids)
            goal = torch.stack([t["boxes"].mean(0) for t in targets])
            labels = torch.stack([(ids == t["labels"][0]).nonzero()[0, 0] for t in targets])
            return {"loss_bbox": torch.nn.functional.l1_loss(boxes, goal) / 64,
                    "loss_cls": torch.nn.functional.cross_entropy(logits, labels)}
        scores, idx = logits.softmax(-1).max(-1)
        return [{"boxes": b[None], "scores": s[None], "labels": torch.tensor(self.category_ids)[i][None]}
                for b, s, i in zip(boxes, scores, idx)]
