"""A stand-in for ``mmcv.ops`` (mmcv 1.x) backed by torchvision, so MMDetection v2 runs without mmcv-full.

MMDetection imports dozens of names from ``mmcv.ops`` at module load, and the real package needs the compiled
``mmcv._ext`` library, which cannot be built here. :func:`install` puts a module object at ``mmcv.ops`` (and at
every ``mmcv.ops.<sub>``) *before* MMDetection is imported. It carries real implementations of the ops that
Faster R-CNN with DCN needs, written against torchvision, with mmcv's call signatures and return conventions:

- ``nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1) -> (dets [K, 5], keep [K])``;
- ``batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False) -> (dets [K, 5], keep [K])`` with mmcv's
  semantics: ``nms_cfg=None`` sorts only; ``class_agnostic`` in the config wins; classes are separated by
  adding ``idx * (max coordinate + 1)``; above ``split_thr`` boxes (10000) NMS runs class by class and the result
  is re-sorted by score and cut to ``max_num``;
- ``RoIAlign`` / ``roi_align`` (``aligned=True`` subtracts half a pixel, ``sampling_ratio=0`` is adaptive; only
  ``pool_mode='avg'``), which is what ``torchvision.ops.roi_align`` computes;
- ``DeformConv2d`` / ``DeformConv2dPack`` (registered as conv layer ``'DCN'``) and ``ModulatedDeformConv2d`` /
  ``ModulatedDeformConv2dPack`` (``'DCNv2'``) through ``torchvision.ops.deform_conv2d``: mmcv's offset layout
  ``[y0, x0, y1, x1, ...]`` per kernel position is torchvision's, and the Pack modules keep mmcv's parameter
  names (``weight``, ``conv_offset.{weight,bias}``).

Every other name resolves to a placeholder class that raises when it is used, so importing works but nothing
silently computes something else. This is our own code; nothing of mmcv is copied.

Kernels: by default torchvision's. With ``install(kernels='mmcv')`` NMS, RoIAlign and DCN v1 run mmcv's own CPU
kernels, compiled from the C++ sources that the mmcv 1.x pip package ships (``tools/mmcv_kernels.py``): then the
MMDetection side of a parity run is MMDetection + mmcv's kernels throughout. (DCN v2 stays on torchvision.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision import ops as tv_ops

__all__ = ["install"]

# Which kernels back nms / roi_align / deform_conv2d: None = torchvision, else the extension module built by
# tools/mmcv_kernels.py from mmcv's own C++ sources (set by install(kernels='mmcv')).
_MMCV_EXT = None


def _as_tensors(boxes, scores):
    import numpy as np

    is_numpy = isinstance(boxes, np.ndarray)
    if is_numpy:
        boxes = torch.from_numpy(boxes)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    return boxes, scores, is_numpy


def nms(boxes, scores, iou_threshold: float, offset: int = 0, score_threshold: float = 0, max_num: int = -1,
        **kwargs):
    """mmcv's ``nms``: ``(dets [K, 5] = boxes + score column, keep [K])``, best first."""
    if "iou_thr" in kwargs:  # mmcv's deprecated argument name
        iou_threshold = kwargs.pop("iou_thr")
    if kwargs:
        raise TypeError(f"nms: unexpected arguments {sorted(kwargs)}")
    if offset != 0:
        raise NotImplementedError("nms: offset=1 (legacy +1 box sizes) is not supported by the shim")
    boxes, scores, is_numpy = _as_tensors(boxes, scores)
    idx = torch.arange(boxes.shape[0], device=boxes.device)
    if score_threshold > 0:
        valid = scores > score_threshold
        boxes_f, scores_f, idx = boxes[valid], scores[valid], idx[valid]
    else:
        boxes_f, scores_f = boxes, scores
    if _MMCV_EXT is not None:
        # mmcv's CPU NMS is float32-only (MMDetection never runs it on anything else).
        keep = _MMCV_EXT.nms(boxes_f.float().contiguous(), scores_f.float().contiguous(), float(iou_threshold),
                             int(offset))
    else:
        keep = tv_ops.nms(boxes_f, scores_f, float(iou_threshold))
    if max_num > 0:
        keep = keep[:max_num]
    inds = idx[keep]
    dets = torch.cat([boxes[inds], scores[inds].reshape(-1, 1)], 1)
    if is_numpy:
        return dets.numpy(), inds.numpy()
    return dets, inds


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, nms_cfg: dict | None, class_agnostic: bool = False):
    """mmcv's ``batched_nms`` (see the module docstring for the semantics reproduced)."""
    if nms_cfg is None:
        scores, inds = scores.sort(descending=True)
        return torch.cat([boxes[inds], scores[:, None]], -1), inds
    cfg = dict(nms_cfg)
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    if class_agnostic:
        boxes_for_nms = boxes
    else:
        if boxes.shape[-1] != 4:
            raise NotImplementedError("batched_nms: rotated boxes are not supported by the shim")
        shift = idxs.to(boxes) * (boxes.max() + 1)
        boxes_for_nms = boxes + shift[:, None]
    nms_type = cfg.pop("type", "nms")
    if nms_type != "nms":
        raise NotImplementedError(f"batched_nms: nms type {nms_type!r} is not supported by the shim")
    split_thr = cfg.pop("split_thr", 10000)
    if boxes_for_nms.shape[0] < split_thr:
        dets, keep = nms(boxes_for_nms, scores, **cfg)
        boxes = boxes[keep]
        scores = dets[:, -1]
    else:
        max_num = cfg.pop("max_num", -1)
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        for c in torch.unique(idxs):
            members = (idxs == c).nonzero().view(-1)
            _, k = nms(boxes_for_nms[members], scores[members], **cfg)
            chosen[members[k]] = True
        keep = chosen.nonzero().view(-1)
        scores, order = scores[keep].sort(descending=True)
        keep = keep[order]
        boxes = boxes[keep]
        if max_num > 0:
            keep, boxes, scores = keep[:max_num], boxes[:max_num], scores[:max_num]
    return torch.cat([boxes, scores[:, None]], -1), keep


def roi_align(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = 0,
              pool_mode: str = "avg", aligned: bool = True) -> Tensor:
    """mmcv's ``roi_align``: ``input [N, C, H, W]``, ``rois [K, 5]`` (batch index, x1, y1, x2, y2)."""
    if pool_mode != "avg":
        raise NotImplementedError("roi_align: only pool_mode='avg' is supported by the shim")
    if _MMCV_EXT is not None:
        oh, ow = _pair(output_size)
        out = input.new_zeros((rois.shape[0], input.shape[1], oh, ow))
        empty = input.new_zeros(0)
        _MMCV_EXT.roi_align_forward(input.contiguous(), rois.to(input.dtype).contiguous(), out, empty, empty, oh, ow,
                                    float(spatial_scale), int(sampling_ratio), 1, bool(aligned))
        return out
    return tv_ops.roi_align(input, rois.to(input.dtype), _pair(output_size), float(spatial_scale),
                            int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """mmcv's ``RoIAlign`` module (``forward(input [N, C, H, W], rois [K, 5]) -> [K, C, oh, ow]``)."""

    def __init__(self, output_size, spatial_scale: float = 1.0, sampling_ratio: int = 0, pool_mode: str = "avg",
                 aligned: bool = True, use_torchvision: bool = False) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.pool_mode = pool_mode
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.pool_mode,
                         self.aligned)


def deform_conv2d(input, offset, weight, stride=1, padding=0, dilation=1, groups=1, deform_groups=1,
                  bias=False, im2col_step=32, mask=None):
    """mmcv's functional deformable conv (v1; v2 when ``mask`` is given) via torchvision."""
    if bias is not False and bias is not None:
        raise NotImplementedError("deform_conv2d: bias is not supported (mmcv's DeformConv2d has none)")
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError("deform_conv2d: weight and input channels disagree")
    # torchvision infers the deformable groups from the offset's channels: 2 * deform_groups * kh * kw.
    if offset.shape[1] != 2 * deform_groups * weight.shape[2] * weight.shape[3]:
        raise ValueError("deform_conv2d: offset channels do not match deform_groups and the kernel")
    if _MMCV_EXT is not None and mask is None:
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        kh, kw = weight.shape[2:]
        oh = (input.shape[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        ow = (input.shape[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        out = input.new_empty((input.shape[0], weight.shape[0], oh, ow))
        step = min(im2col_step, input.shape[0])
        while input.shape[0] % step:  # mmcv asserts divisibility; its callers pick a divisor
            step -= 1
        _MMCV_EXT.deform_conv_forward(input.contiguous(), weight.contiguous(), offset.to(input.dtype).contiguous(),
                                      out, input.new_empty(0), input.new_empty(0), kw, kh, sw, sh, pw, ph, dw, dh,
                                      groups, deform_groups, step)
        return out
    return tv_ops.deform_conv2d(input, offset.to(input.dtype), weight, None, _pair(stride), _pair(padding),
                                _pair(dilation), mask)


class DeformConv2d(nn.Module):
    """mmcv's ``DeformConv2d``: ``forward(x [N, C, H, W], offset [N, 2*dg*kh*kw, Ho, Wo])``; no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = False, im2col_step: int = 32,
                 deformable_groups: int | None = None) -> None:
        super().__init__()
        if bias:
            raise ValueError("DeformConv2d: bias is not supported (as in mmcv)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = groups
        self.deform_groups = deformable_groups or deform_groups
        self.transposed = False
        self.output_padding = (0,)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        kh, kw = self.kernel_size
        pad_h, pad_w = max(kh - x.shape[2], 0), max(kw - x.shape[3], 0)
        if pad_h or pad_w:  # mmcv pads inputs smaller than the kernel and crops the output back
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
            offset = nn.functional.pad(offset, (0, pad_w, 0, pad_h))
            mask = None if mask is None else nn.functional.pad(mask, (0, pad_w, 0, pad_h))
        out = deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups,
                            self.deform_groups, mask=mask)
        if pad_h or pad_w:
            out = out[:, :, : out.shape[2] - pad_h, : out.shape[3] - pad_w]
        return out

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return self._deform(x, offset)


class DeformConv2dPack(DeformConv2d):
    """mmcv's ``DeformConv2dPack``: the offsets come from a zero-initialised conv ``conv_offset`` of ``x``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 2 * self.kernel_size[0]
                                     * self.kernel_size[1], self.kernel_size, self.stride, self.padding,
                                     self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._deform(x, self.conv_offset(x))


class ModulatedDeformConv2d(DeformConv2d):
    """mmcv's ``ModulatedDeformConv2d`` (DCN v2): ``forward(x, offset, mask)``; optional bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True, deformable_groups: int | None = None
                 ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups or deform_groups)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        out = self._deform(x, offset, mask)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """mmcv's ``ModulatedDeformConv2dPack``: ``conv_offset`` gives 3*dg*kh*kw channels (offset y/x halves, then
    the mask logits)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 3 * self.kernel_size[0]
                                     * self.kernel_size[1], self.kernel_size, self.stride, self.padding,
                                     self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return super().forward(x, torch.cat((o1, o2), dim=1), mask.sigmoid())


_REAL = {
    "nms": nms, "batched_nms": batched_nms, "roi_align": roi_align, "RoIAlign": RoIAlign,
    "deform_conv2d": deform_conv2d, "DeformConv2d": DeformConv2d, "DeformConv2dPack": DeformConv2dPack,
    "ModulatedDeformConv2d": ModulatedDeformConv2d, "ModulatedDeformConv2dPack": ModulatedDeformConv2dPack,
}


def _placeholder(name: str) -> type:
    def _refuse(*args, **kwargs):
        raise NotImplementedError(f"mmcv.ops.{name} is not available in the torchvision shim")

    # A class, so that MMDetection can subclass or register it at import time; using it raises.
    return type(name, (nn.Module,), {"__init__": _refuse, "__call__": _refuse, "__module__": "mmcv.ops"})


class _OpsModule(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing ``mmcv.ops.nms`` binds the submodule as attribute ``nms`` of its parent; keep the function.
        if isinstance(value, types.ModuleType) and name in _REAL:
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _REAL.get(name) or _placeholder(name)
        setattr(self, name, value)
        return value


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import mmcv.ops.<anything>`` with a module that resolves names like ``mmcv.ops`` does."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("mmcv.ops.") or fullname == "mmcv._ext":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _OpsModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install(kernels: str = "torchvision") -> types.ModuleType:
    """Install the shim as ``mmcv.ops``; call before importing ``mmdet``. Returns the module (idempotent).

    Args:
        kernels: ``'torchvision'`` or ``'mmcv'`` (mmcv's own CPU kernels for NMS, RoIAlign and DCN v1, compiled
            from the installed mmcv package's sources by ``tools/mmcv_kernels.py``).
    """
    global _MMCV_EXT
    if kernels not in ("torchvision", "mmcv"):
        raise ValueError(f"kernels must be 'torchvision' or 'mmcv', got {kernels!r}")
    if kernels == "mmcv" and _MMCV_EXT is None:
        import mmcv_kernels

        _MMCV_EXT = mmcv_kernels.load()
    if isinstance(sys.modules.get("mmcv.ops"), _OpsModule):
        return sys.modules["mmcv.ops"]
    import mmcv
    from mmcv.cnn import CONV_LAYERS

    ops = _OpsModule("mmcv.ops")
    ops.__path__ = []
    ops.__file__ = __file__
    for name, value in _REAL.items():
        setattr(ops, name, value)
    sys.meta_path.insert(0, _SubmoduleFinder())
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    # mmcv.ops registers the deformable convs as conv layers 'DCN' / 'DCNv2' when it is imported.
    CONV_LAYERS.register_module("DCN", module=DeformConv2dPack, force=True)
    CONV_LAYERS.register_module("DCNv2", module=ModulatedDeformConv2dPack, force=True)
    return ops
