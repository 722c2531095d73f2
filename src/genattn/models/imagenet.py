"""ImageNet initialisation of the backbone from torchvision's ResNet weights.

The seed's detectors start from torchvision's ImageNet ResNet-50 (V1) weights (MMDetection's
``torchvision://resnet50``). Our ``ResNet`` keeps torchvision's parameter names, so the file loads as it is; only
the classifier (``fc``) is dropped, and the parameters torchvision's ResNet does not have (attention modules,
deformable-conv offset convs) stay at their initialisation, which makes each of them start as the identity /
the plain convolution.
"""

from __future__ import annotations

import os

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


def load_imagenet_weights(
    backbone: nn.Module,
    source: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Load torchvision's ImageNet ResNet weights into ``backbone`` (non-strictly, without ``fc``).

    The file is read by :func:`genattn.models.weights.read_checkpoint` (``weights_only=True``; a URL is downloaded
    once into the torch hub cache, where torchvision keeps its own downloads too, and its hash checked).

    Args:
        backbone: A ``genattn.models.resnet.ResNet`` (or any module with torchvision's ResNet names).
        source: Path or URL of a torchvision ResNet state-dict file (e.g. ``resnet50-0676ba61.pth``), or None /
            ``'torchvision'`` for torchvision's V1 weights of the backbone's depth.
        arch: 'resnet50' or 'resnet101' for the download; None infers it from ``backbone.layers``
            (ResNet-50 for any other depth).
        progress: Show a download progress bar.

    Returns:
        ``(missing_keys, unexpected_keys)``: backbone entries the weights did not provide (for a seed backbone
        exactly the attention and offset-conv parameters; ``num_batches_tracked`` counters are not listed) and
        weight entries the backbone has no place for (``fc.*`` is dropped beforehand and never listed).

    Raises:
        RuntimeError: the weights can be neither downloaded nor found in the cache.
        ValueError: ``source`` is missing or not a ResNet state-dict file, or its shapes do not fit the backbone
            (e.g. a backbone with reduced widths).
    """
    from genattn.models.weights import read_checkpoint  # (weights imports this module for pretrained_backbone)

    if source is None or source == "torchvision":
        if arch is None:
            arch = _ARCHS.get(tuple(getattr(backbone, "layers", ())), "resnet50")
        url = imagenet_weights(arch).url
        try:
            ckpt = read_checkpoint(url, progress=progress)
        except RuntimeError as err:  # no network, a proxy, a truncated download...
            raise RuntimeError(f"{err}; download {url} on a machine with internet access and pass its path "
                               f"(pretrained_backbone=PATH), or place it in the torch hub cache") from None
    else:
        ckpt = read_checkpoint(source, progress=progress)
    if ckpt.kind != "imagenet":
        raise ValueError(f"ImageNet weights {ckpt.source}: not a torchvision ResNet state dict (a {ckpt.kind} "
                         f"checkpoint)")
    state = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("fc.")}

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
