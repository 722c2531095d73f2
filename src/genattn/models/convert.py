"""MMDetection checkpoints -> state dicts of our :class:`~genattn.models.detector.FasterRCNN`.

Our module names are MMDetection's, so a v2 checkpoint needs only these renames:

=====================================================  =====================================================
MMDetection key                                        ours
=====================================================  =====================================================
``neck.lateral_convs.i.conv.{weight,bias}``            ``neck.lateral_convs.i.{weight,bias}``
``neck.fpn_convs.i.conv.{weight,bias}``                ``neck.fpn_convs.i.{weight,bias}``
``backbone.layerK.i.conv2_offset.*`` (older files)     ``backbone.layerK.i.conv2.conv_offset.*``
``bbox_head.*`` (v1 files)                             ``roi_head.bbox_head.*``
``module.*`` (saved from a wrapped model)              ``*``
=====================================================  =====================================================

Everything else (``backbone.*`` with torchvision's ResNet names, ``gen_attention_block.*``,
``rpn_head.rpn_{conv,cls,reg}``, ``roi_head.bbox_head.{shared_fcs.0,shared_fcs.1,fc_cls,fc_reg}``) keeps its
name. v1 files (MMDetection 1.x: ``bbox_head.*`` without ``roi_head.``) put the background class *first* in
``fc_cls`` and give ``fc_reg`` a background slot (``4 * (num_classes + 1)`` rows); we move the background logit
last and drop the background regression rows, as MMDetection v2 does. Our own checkpoints (a plain state dict, or
one under ``'state_dict'`` / ``'model'``) pass through unchanged.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["convert_mmdet_checkpoint"]

_RENAMES = (
    (re.compile(r"^module\."), ""),
    (re.compile(r"^bbox_head\."), "roi_head.bbox_head."),
    (re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\."), r"neck.\1.\2."),
    (re.compile(r"\.conv2_offset\."), ".conv2.conv_offset."),
)


def _list(keys: list[str], limit: int = 30) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_mmdet_checkpoint(state: Mapping[str, Tensor], model: nn.Module, *, where: str = "<dict>"
                             ) -> dict[str, Tensor]:
    """Map an MMDetection v1/v2 state dict (or one of ours) onto ``model``'s, every key accounted for.

    Files are read by :func:`genattn.models.weights.read_checkpoint`, which hands the state dict here.

    Args:
        state: The file's state dict (MMDetection's layout or ours).
        model: The model the weights are for (its keys and shapes are the reference).
        where: The file's name, for messages.

    Returns:
        A state dict that ``model.load_state_dict(..., strict=True)`` accepts. ``num_batches_tracked`` buffers
        missing from the file are taken from ``model``; file ones the model lacks (e.g. with FrozenBatchNorm)
        are dropped.

    Raises:
        ValueError: One line naming the file and the problem; for a layout mismatch, the unmatched file keys,
            the model keys left without a value and the keys whose shapes differ.
    """
    ours = model.state_dict()
    v1 = any(k.startswith("bbox_head.") or k.startswith("module.bbox_head.") for k in state)

    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    mis_shaped: list[str] = []
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        if new not in ours:
            if not new.endswith("num_batches_tracked"):
                unmatched.append(key)
            continue
        target = ours[new]
        if v1 and new.startswith("roi_head.bbox_head.fc_cls.") and value.shape[:1] == target.shape[:1]:
            value = torch.cat([value[1:], value[:1]])  # background first -> last
        elif v1 and new.startswith("roi_head.bbox_head.fc_reg.") and value.shape[0] == target.shape[0] + 4:
            value = value[4:]  # drop the background class's 4 regression rows
        if value.shape != target.shape:
            mis_shaped.append(f"{key} {list(value.shape)} (model: {list(target.shape)})")
            continue
        if new in out:
            unmatched.append(f"{key} (duplicate of {new})")
            continue
        out[new] = value
    missing = []
    for key, value in ours.items():
        if key not in out:
            if key.endswith("num_batches_tracked"):
                out[key] = value.clone()
            else:
                missing.append(key)
    if unmatched or mis_shaped or missing:
        parts = []
        if unmatched:
            parts.append(f"{len(unmatched)} checkpoint keys match no model key: {_list(unmatched)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} keys have the wrong shape: {_list(mis_shaped)}")
        if missing:
            parts.append(f"{len(missing)} model keys have no value in the checkpoint: {_list(missing)}")
        raise ValueError(f"checkpoint {where} does not fit the model: " + "; ".join(parts))
    return out
