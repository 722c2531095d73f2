"""ImageNet initialisation of the backbone from torchvision's ResNet weights.

The seed's detectors start from torchvision's ImageNet ResNet-50 (V1) weights (MMDetection's
``torchvision://resnet50``). Our ``ResNet`` keeps torchvision's parameter names, so the file loads as it is; only
the classifier (``fc``) is dropped, and the parameters torchvision's ResNet does not have (attention modules,
deformable-conv offset convs) stay at their initialisation, which makes each of them start as the identity /
the plain convolution.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = ["load_imagenet_weights", "imagenet_weights"]

# Block counts -> torchvision's weights enum member of that depth.
_ARCHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}


def imagenet_weights(arch: str = "resnet50") -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet V1 weights entry for ``arch`` ('resnet50' or 'resnet101'); it carries the URL."""
    if arch == "resnet50":
        return torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    if arch == "resnet101":
        return torchvision.models.ResNet101_Weights.IMAGENET1K_V1
    raise ValueError(f"arch={arch!r} must be 'resnet50' or 'resnet101'")


def _download(arch: str, progress: bool) -> dict[str, Any]:
    weights = imagenet_weights(arch)
    try:
        # torchvision's weights API goes through the torch hub cache, so a file downloaded once works offline.
        # weights_only: a file from the internet must never run code; check_hash: the name holds a sha256 prefix.
        return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except Exception as exc:  # no network, proxy errors, a truncated download...: all end the same way
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"could not download torchvision's ImageNet {arch} weights ({type(exc).__name__}: {exc}); "
            f"download {weights.url} on a machine with internet access and pass its path as "
            f"source=PATH (or place it in {cache})"
        ) from exc


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet weights file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"ImageNet weights file {path!r} is not a readable PyTorch checkpoint: {exc}") from exc
    # Accept a bare state dict (torchvision's files) and the usual wrappers around one.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"ImageNet weights file {path!r} does not hold a state dict of tensors")
    return obj


def load_imagenet_weights(
    backbone: nn.Module,
    source: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Load torchvision's ImageNet ResNet weights into ``backbone`` (non-strictly, without ``fc``).

    Args:
        backbone: A ``genattn.models.resnet.ResNet`` (or any module with torchvision's ResNet names).
        source: Path of a torchvision ResNet state-dict file (e.g. ``resnet50-0676ba61.pth``), or None to
            download torchvision's V1 weights through ``torchvision.models`` (cached in the torch hub directory).
        arch: 'resnet50' or 'resnet101' for the download; None infers it from ``backbone.layers``
            (ResNet-50 for any other depth).
        progress: Show a download progress bar.

    Returns:
        ``(missing_keys, unexpected_keys)``: backbone entries the weights did not provide (for a seed backbone
        exactly the attention and offset-conv parameters; ``num_batches_tracked`` counters are not listed) and
        weight entries the backbone has no place for (``fc.*`` is dropped beforehand and never listed).

    Raises:
        RuntimeError: ``source`` is None and the weights can be neither downloaded nor found in the cache.
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is not a state-dict file, or its shapes do not fit the backbone (e.g. a
            backbone with reduced widths).
    """
    if source is None:
        if arch is None:
            arch = _ARCHS.get(tuple(getattr(backbone, "layers", ())), "resnet50")
        state = _download(arch, progress)
    else:
        state = _read_file(source)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}

    own = backbone.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs backbone {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        shown = "; ".join(mismatched[:3]) + (f"; ... ({len(mismatched)} in all)" if len(mismatched) > 3 else "")
        raise ValueError(f"ImageNet weights do not fit this backbone's shapes (widths or depth differ): {shown}")

    result = backbone.load_state_dict(state, strict=False)
    # BatchNorm's step counter is bookkeeping, not a weight: older torchvision files lack it, which is harmless.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    return missing, list(result.unexpected_keys)
