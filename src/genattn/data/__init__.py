"""Datasets, transforms and batch samplers for detection training and evaluation.

``from genattn.data import CocoDetection, collate, GroupedBatchSampler``. The built-in synthetic dataset lives
in :mod:`genattn.data.synthetic`; :func:`data_root` resolves a data root, ``'shapes'`` meaning that dataset.
"""

from genattn.data.coco import CocoDetection, collate, load_coco_json
from genattn.data.samplers import GroupedBatchSampler, ShardedSampler
from genattn.data.synthetic import data_root
from genattn.data.transforms import apply_orientation, load_image, load_stored_image

__all__ = ["CocoDetection", "collate", "data_root", "load_coco_json", "GroupedBatchSampler", "ShardedSampler",
           "load_image", "load_stored_image", "apply_orientation"]
