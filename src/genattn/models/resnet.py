"""Bottleneck ResNet backbone with per-stage attention and deformable-conv wiring.

Unlike torchvision's ``ResNet._make_layer``, which gives every block the same arguments, this backbone takes
MMDetection-style per-stage tuples, so an MMDetection config maps onto it line by line::

    # MMDetection: plugins=[dict(cfg=dict(type='GeneralizedAttention', spatial_range=-1, num_heads=8,
    #                                     attention_type='0010', kv_stride=2),
    #                            stages=(False, False, True, True), position='after_conv2')],
    #              dcn=dict(type='DCN', deform_groups=1), stage_with_dcn=(False, True, True, True)
    backbone = resnet50(attention_stages=(False, False, True, True), attention_position='after_conv2',
                        attention_cfg=dict(spatial_range=-1, num_heads=8, attention_type='0010', kv_stride=2),
                        dcn_stages=(False, True, True, True), frozen_stages=1, norm_eval=True)

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layerK.0.downsample.{0,1}``),
so torchvision's ImageNet state dicts load as they are (minus ``fc``); the attention module of a block is its
``gen_attention_block`` and a deformable conv2 keeps its offsets at ``conv2.conv_offset`` (MMDetection's names).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from genattn.models.bottleneck import ATTENTION_POSITIONS, Bottleneck, DeformConvPack

__all__ = ["ResNet", "resnet50", "resnet101", "Bottleneck", "DeformConvPack"]


def _stage_flags(name: str, value: Sequence[bool]) -> tuple[bool, bool, bool, bool]:
    """Validate a per-stage tuple of four booleans (0/1 accepted) and return it as a tuple of bools."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4:
        raise ValueError(f"{name}={value!r} must be a tuple of 4 booleans, one per stage (layer1..layer4)")
    if any(not isinstance(v, (bool, int)) or v not in (0, 1) for v in value):
        raise ValueError(f"{name}={value!r} must hold booleans only")
    return tuple(bool(v) for v in value)  # type: ignore[return-value]


def _attention_config(attention_cfg: Any):
    """``attention_cfg`` as an AttentionConfig (a mapping is checked key by key); None stays None."""
    # Imported here so that a model without attention builds even where the attention package is broken.
    from genattn.attention import AttentionConfig

    if attention_cfg is None or isinstance(attention_cfg, AttentionConfig):
        return attention_cfg
    if isinstance(attention_cfg, Mapping):
        return AttentionConfig.from_dict(attention_cfg)
    raise ValueError(f"attention_cfg must be an AttentionConfig or a mapping of GeneralizedAttention arguments, "
                     f"got {attention_cfg!r}")


class ResNet(nn.Module):
    """Bottleneck ResNet (``style='pytorch'``) returning the C2..C5 feature maps.

    Args:
        layers: Number of bottleneck blocks in layer1..layer4 ((3, 4, 6, 3) is ResNet-50).
        base_width: Channels scale: layer ``i`` has ``planes = base_width * 2**i`` and outputs ``4 * planes``
            (64 is the standard ResNet; 16 makes a tiny CPU model).
        stem_width: Output channels of the 7x7 stem conv (64 standard).
        groups: Groups of the 3x3 convs (ResNeXt cardinality; 1 for ResNet).
        width_per_group: ResNeXt bottleneck width per group; the 3x3 width of a block is
            ``int(planes * width_per_group / 64) * groups`` (torchvision's rule; 64 and groups=1 give ``planes``).
        attention_stages: Per stage, whether every block of that stage gets a ``GeneralizedAttention``.
        attention_position: Where in the block: 'after_conv1', 'after_conv2' or 'after_conv3'.
        attention_cfg: The ``GeneralizedAttention`` settings other than ``in_channels`` (which is the width of
            the tensor at ``attention_position``): an :class:`~genattn.attention.AttentionConfig` or a mapping of
            its fields. None means the seed's (:data:`~genattn.attention.SEED_ATTENTION`).
        dcn_stages: Per stage, whether conv2 of every block (the stride-2 first one too) is deformable.
        dcn_modulated: Modulated deformable conv (DCN v2) instead of DCN v1.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and layer1..layerk: their parameters get
            ``requires_grad=False`` and the modules stay in eval mode.
        norm_eval: Keep every BatchNorm in eval mode (running statistics frozen) even in ``train()``; their
            affine parameters stay trainable unless their stage is frozen.
        norm_layer: Normalisation layer class, called with the channel count (e.g. ``FrozenBatchNorm2d``).
        with_cp: Activation checkpointing in every block (MMDetection's ``with_cp``): less training memory,
            e.g. for the '1111' attention at full resolution, for about one more forward pass of time.

    Raises:
        ValueError: A wiring argument is malformed (its name is in the message).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        base_width: int = 64,
        stem_width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        attention_stages: Sequence[bool] = (False, False, False, False),
        attention_position: str = "after_conv2",
        attention_cfg: Any = None,
        dcn_stages: Sequence[bool] = (False, False, False, False),
        dcn_modulated: bool = False,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if (isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 4
                or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in layers)):
            raise ValueError(f"layers={layers!r} must be 4 positive block counts, e.g. (3, 4, 6, 3)")
        for name, value in (("base_width", base_width), ("stem_width", stem_width), ("groups", groups),
                            ("width_per_group", width_per_group)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        attention_stages = _stage_flags("attention_stages", attention_stages)
        dcn_stages = _stage_flags("dcn_stages", dcn_stages)
        if attention_position not in ATTENTION_POSITIONS:
            raise ValueError(f"attention_position={attention_position!r} must be one of {ATTENTION_POSITIONS}")
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages={frozen_stages!r} must be an integer in -1..4")

        self.layers = tuple(layers)
        self.attention_stages = attention_stages
        self.attention_position = attention_position
        self.dcn_stages = dcn_stages
        self.frozen_stages = frozen_stages
        self.norm_eval = bool(norm_eval)
        self.with_cp = bool(with_cp)

        self.attention_cfg = _attention_config(attention_cfg)
        make_attention = None
        if any(attention_stages):
            if self.attention_cfg is None:
                from genattn.attention import SEED_ATTENTION

                self.attention_cfg = SEED_ATTENTION
            make_attention = self.attention_cfg.build

        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        inplanes = stem_width
        self.out_channels: list[int] = []
        for i, blocks in enumerate(self.layers):
            planes = base_width * 2**i
            width = int(planes * width_per_group / 64) * groups
            if width < 1:
                raise ValueError(f"width_per_group={width_per_group} with base_width={base_width} gives a "
                                 f"zero-width stage {i + 1}; raise one of them")
            if attention_stages[i]:
                self._check_attention_width(width if attention_position != "after_conv3" else planes * 4)
            stage = self._make_stage(
                inplanes, planes, blocks, stride=1 if i == 0 else 2, width=width, groups=groups,
                norm_layer=norm_layer, dcn=dcn_stages[i], dcn_modulated=dcn_modulated,
                attention=make_attention if attention_stages[i] else None,
            )
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * Bottleneck.expansion
            self.out_channels.append(inplanes)

        self._init_weights()
        self._freeze_stages()

    def _check_attention_width(self, channels: int) -> None:
        # mmcv's rule: heads are channels // num_heads wide, so num_heads need not divide the width but must not
        # exceed it (a zero-width head).
        heads = self.attention_cfg.num_heads
        if heads > channels:
            raise ValueError(f"attention_cfg.num_heads={heads} must not exceed the attention input width "
                             f"{channels} ({self.attention_position}) of every attention stage")

    def _make_stage(self, inplanes: int, planes: int, blocks: int, *, stride: int, width: int, groups: int,
                    norm_layer: Callable[[int], nn.Module], dcn: bool, dcn_modulated: bool,
                    attention: Callable[[int], nn.Module] | None) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            # style='pytorch' projection: a strided 1x1 conv (torchvision's and MMDetection's default).
            downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm_layer(out))
        kw = dict(width=width, groups=groups, norm_layer=norm_layer, dcn=dcn, dcn_modulated=dcn_modulated,
                  attention=attention, attention_position=self.attention_position, with_cp=self.with_cp)
        return nn.Sequential(
            Bottleneck(inplanes, planes, stride, downsample, **kw),
            *(Bottleneck(out, planes, 1, None, **kw) for _ in range(blocks - 1)),
        )

    def _init_weights(self) -> None:
        """He initialisation for the ResNet's own convs, unit BatchNorm; the attention modules keep their own
        initialisation (gamma = 0) and the offset convs stay zero, so a new backbone starts as a plain ResNet."""
        skip = set()
        for m in self.modules():
            if isinstance(m, DeformConvPack):
                skip.add(m.conv_offset)
            elif isinstance(m, Bottleneck) and hasattr(m, "gen_attention_block"):
                skip.update(m.gen_attention_block.modules())
        for m in self.modules():
            if m in skip:
                continue
            if isinstance(m, (nn.Conv2d, DeformConvPack)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        """Set train/eval mode, keeping frozen stages and (with ``norm_eval``) every BatchNorm in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the multi-scale features.

        Args:
            x: Images ``[N, 3, H, W]``.

        Returns:
            ``[C2, C3, C4, C5]``: ``[N, out_channels[i], ceil(H / s), ceil(W / s)]`` for strides s = 4, 8, 16, 32
            (exactly ``H / s`` when H is a multiple of 32).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 backbone (blocks 3, 4, 6, 3); keyword arguments as for ``ResNet``."""
    return ResNet((3, 4, 6, 3), **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 backbone (blocks 3, 4, 23, 3); keyword arguments as for ``ResNet``."""
    return ResNet((3, 4, 23, 3), **kwargs)
