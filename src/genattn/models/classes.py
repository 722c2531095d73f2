"""The classes a detector predicts: dataset category ids and their names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["Classes", "COCO_CLASS_NAMES", "COCO_CATEGORY_IDS"]

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""COCO's 80 class names in MMDetection's order (= ascending category id)."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
"""COCO category id of each of the 80 classes, in the same order."""


@dataclass(frozen=True)
class Classes:
    """The categories of a detector, in the order of its class indices.

    The detector speaks category ids at its boundary (targets and detections carry them, e.g. COCO's 1..90);
    ``names`` are for people.

    Raises:
        ValueError: no classes, repeated ids, or as many names as ids not given.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        ids, names = tuple(int(c) for c in self.category_ids), tuple(str(n) for n in self.names)
        if not ids:
            raise ValueError("classes: at least one category is needed")
        if len(set(ids)) != len(ids):
            raise ValueError(f"category_ids: {len(ids)} ids but only {len(set(ids))} distinct")
        if len(names) != len(ids):
            raise ValueError(f"class_names: {len(names)} names for {len(ids)} category ids")
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "names", names)

    def __len__(self) -> int:
        return len(self.category_ids)

    @classmethod
    def coco(cls) -> "Classes":
        """COCO's 80 classes (MMDetection's order, ascending category id)."""
        return cls(COCO_CATEGORY_IDS, COCO_CLASS_NAMES)

    @classmethod
    def make(cls, num_classes: int | None = None, category_ids: Sequence[int] | None = None,
             names: Sequence[str] | None = None) -> "Classes":
        """Classes from whatever is known: ids default to COCO's for 80 classes, else ``1..num_classes``
        (or the names' count); names default to COCO's for COCO's ids, else ``'class_<id>'``.

        Raises:
            ValueError: the numbers disagree.
        """
        if category_ids is None:
            count = num_classes if num_classes is not None else (len(names) if names is not None else 80)
            if names is not None and tuple(names) == COCO_CLASS_NAMES or (names is None and count == 80):
                category_ids = COCO_CATEGORY_IDS
            else:
                category_ids = tuple(range(1, count + 1))
        if num_classes is not None and len(category_ids) != num_classes:
            raise ValueError(f"category_ids: {len(category_ids)} ids for num_classes={num_classes}")
        if names is None:
            names = COCO_CLASS_NAMES if tuple(category_ids) == COCO_CATEGORY_IDS else tuple(
                f"class_{c}" for c in category_ids)
        return cls(tuple(category_ids), tuple(names))

    def to_dict(self) -> dict[str, list]:
        return {"category_ids": list(self.category_ids), "class_names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> "Classes":
        return cls(tuple(data["category_ids"]), tuple(data["class_names"]))
