"""A tiny detector trained for a few seconds, for tests that compare detections between two ways of computing
them (export, low precision): a trained model's scores are spread out, so its detections are not a pile of ties
as a random model's are. A plain module with a unique name, imported by the tests."""

from __future__ import annotations

import numpy as np
import torch

from genattn.models import Classes, ModelConfig

MODEL = "faster_rcnn_r50_fpn_attention_1111_1x_coco"
CLASSES = Classes((3, 7), ("red", "blue"))
COLOURS = {3: (220, 40, 40), 7: (40, 60, 220)}
# 96 px images: the coarsest FPN level (stride 64) is then at least 2x2, which an exported graph needs.
SETTINGS = {"backbone": {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8, "frozen_stages": -1,
                         "norm_eval": True},
            "heads": {"fpn_channels": 16, "representation_size": 32, "box_batch_size_per_image": 64},
            "min_size": 96, "max_size": 128}


def picture(rng: np.random.Generator, size: tuple[int, int] = (96, 128), noise: int = 0
            ) -> tuple[torch.Tensor, dict]:
    """A grey uint8 image ``[3, H, W]`` with one or two coloured rectangles, and its target.

    ``noise``: the background's pixels vary uniformly by up to this much. On a flat background many anchors get
    exactly equal scores, and which of them a top-k or an NMS keeps is then up to the implementation.
    """
    h, w = size
    pixels = (128 + rng.integers(-noise, noise + 1, size=(h, w, 3))).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 3))):
        cat = int(rng.choice([3, 7]))
        bw, bh = (int(v) for v in rng.integers(min(h, w) // 4, min(h, w) // 2, size=2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        pixels[y:y + bh, x:x + bw] = COLOURS[cat]
        boxes.append([x, y, x + bw, y + bh])
        labels.append(cat)
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), target


def trained_tiny(steps: int = 30, seed: int = 0) -> tuple[torch.nn.Module, ModelConfig]:
    """The tiny '1111' detector after ``steps`` SGD steps of batch 4 (about 10 s on a loaded 2-core CPU), in
    eval mode."""
    torch.manual_seed(seed)
    config = ModelConfig.from_name(MODEL).updated(SETTINGS)
    model = config.build(CLASSES).train()
    rng = np.random.default_rng(seed)
    data = [picture(rng) for _ in range(16)]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        batch = [data[(4 * step + i) % len(data)] for i in range(4)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return model.eval(), config
