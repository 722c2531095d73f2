"""The ResNet bottleneck block with pluggable attention and deformable convolution.

Parameter names follow torchvision's ``Bottleneck`` (``conv1``/``bn1``/``conv2``/``bn2``/``conv3``/``bn3``/
``downsample.{0,1}``) so that torchvision's ImageNet weights load unchanged, and the additions follow
MMDetection's names (``conv2.conv_offset``, ``gen_attention_block``) so that its released checkpoints load too.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

ATTENTION_POSITIONS = ("after_conv1", "after_conv2", "after_conv3")


class DeformConvPack(DeformConv2d):
    """A deformable 3x3 convolution that predicts its own sampling offsets (DCN v1) or offsets and masks (v2).

    The layout matches MMDetection's ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``: the kernel is this
    module's own ``weight`` ``[out, in / groups, k, k]`` (no bias) and the offsets come from a child
    ``conv_offset`` that sees the same input with the same stride, padding and dilation. Offsets are
    ``(dy, dx)`` pairs per kernel tap, the channel order of ``torchvision.ops.deform_conv2d``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size (square).
        stride: Stride of both the deformable conv and the offset conv.
        padding: Padding of both.
        dilation: Dilation of both.
        groups: Channel groups of the deformable conv (ResNeXt).
        deform_groups: Number of offset groups (each with its own offset field).
        modulated: False for DCN v1 (2 offsets per tap); True for DCN v2 (2 offsets and 1 mask logit per tap).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deform_groups: int = 1,
        modulated: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"deform_groups={deform_groups} must be >= 1 and divide in_channels={in_channels}")
        self.deform_groups = deform_groups
        self.modulated = modulated
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * (3 if modulated else 2) * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset conv, so the layer starts as the plain convolution whose weights it was given
        (e.g. ImageNet weights of a non-deformable ResNet) and learns to deform from there."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the deformable convolution.

        Args:
            x: ``[N, in_channels, H, W]``.

        Returns:
            ``[N, out_channels, H', W']`` with ``H' = (H + 2p - d(k-1) - 1) // s + 1`` (likewise W').
        """
        out = self.conv_offset(x)  # [N, deform_groups * (2|3) * k*k, H', W']
        mask = None
        if self.modulated:
            # MMDetection's ModulatedDeformConv2dPack: the first two thirds are the offsets, the last third
            # holds the mask logits (sigmoid -> [0, 1], so zero-initialised logits start at 0.5).
            o1, o2, logits = torch.chunk(out, 3, dim=1)
            out = torch.cat((o1, o2), dim=1)
            mask = torch.sigmoid(logits)
        return self._deform(x, out, mask)

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        # torchvision's deform_conv2d has no bfloat16 CPU kernel and rejects mixed dtypes under CPU autocast
        # (the offsets come out of autocast's conv in low precision): run it in the weight's dtype and hand
        # back the caller's dtype, as torchvision's own CUDA autocast wrapper does.
        dtype = x.dtype
        if dtype != self.weight.dtype:
            x, offset = x.to(self.weight.dtype), offset.to(self.weight.dtype)
            mask = None if mask is None else mask.to(self.weight.dtype)
        y = super().forward(x, offset, mask)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", deform_groups={self.deform_groups}, modulated={self.modulated}"


class Bottleneck(nn.Module):
    """ResNet bottleneck (``style='pytorch'``: the stride sits on the 3x3 conv2) with optional DCN and attention.

    Order: conv1 -> bn1 -> relu -> [attn after_conv1] -> conv2 -> bn2 -> relu -> [attn after_conv2] -> conv3 ->
    bn3 -> [attn after_conv3] -> (+ identity) -> relu, as in MMDetection's plugin positions.

    Args:
        inplanes: Input channels.
        planes: Base channels of the block; the output has ``planes * 4``.
        stride: Stride of conv2 (and of the downsample branch).
        downsample: Projection of the identity, or None when shapes already match.
        width: Channels of the 1x1 -> 3x3 part (``planes`` for ResNet, more for ResNeXt).
        groups: Groups of conv2.
        norm_layer: Normalisation layer class, called with the channel count.
        dcn: Replace conv2 by a deformable conv.
        dcn_modulated: Use DCN v2 (with masks) instead of v1.
        attention: Factory ``channels -> nn.Module`` building the attention module, or None for none.
        attention_position: One of ``ATTENTION_POSITIONS``.
        with_cp: Recompute the block in the backward pass instead of storing its activations (saves memory
            when training, costs one extra forward; BatchNorm statistics in train mode are updated twice).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        width: int | None = None,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        dcn: bool = False,
        dcn_modulated: bool = False,
        attention: Callable[[int], nn.Module] | None = None,
        attention_position: str = "after_conv2",
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if attention_position not in ATTENTION_POSITIONS:
            raise ValueError(f"attention_position={attention_position!r} must be one of {ATTENTION_POSITIONS}")
        width = planes if width is None else width
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        if dcn:
            self.conv2 = DeformConvPack(width, width, 3, stride=stride, padding=1, groups=groups,
                                        modulated=dcn_modulated)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.with_cp = with_cp
        self.attention_position = attention_position if attention is not None else None
        if attention is not None:
            # The attention runs on whatever tensor sits at its position: the 3x3 width after conv1/conv2,
            # the expanded width after conv3.
            channels = out if attention_position == "after_conv3" else width
            self.gen_attention_block = attention(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Run the block.

        Args:
            x: ``[N, inplanes, H, W]``.

        Returns:
            ``[N, planes * 4, ceil(H / stride), ceil(W / stride)]``.
        """
        # Non-reentrant checkpointing also works when x needs no gradient (e.g. behind frozen stages),
        # where the block's own parameters still do.
        if self.with_cp and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.attention_position == "after_conv1":
            out = self.gen_attention_block(out)
        out = self.relu(self.bn2(self.conv2(out)))
        if self.attention_position == "after_conv2":
            out = self.gen_attention_block(out)
        out = self.bn3(self.conv3(out))
        if self.attention_position == "after_conv3":
            out = self.gen_attention_block(out)
        return self.relu(out + identity)
