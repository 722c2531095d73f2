"""Tests of the ResNet backbone: wiring, shapes, DCN, freezing, norm_eval and MMDetection's key layout."""

import pytest
import torch
import torchvision
from torch import nn

from genattn.models.bottleneck import Bottleneck, DeformConvPack
from genattn.models.resnet import ResNet, resnet50, resnet101

TINY = dict(base_width=16, stem_width=16)
TINY_ATTN = dict(num_heads=2, attention_type="1111", kv_stride=2)
NO, S34, S234 = (False,) * 4, (False, False, True, True), (False, True, True, True)


def tiny(layers=(1, 1, 1, 1), **kw):
    torch.manual_seed(0)
    return ResNet(layers, **{**TINY, **kw})


def torchvision_keys(model):
    """torchvision's ResNet state dict without the classifier: {name: shape}."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


# --------------------------------------------------------------------------------------------- shapes
WIRINGS = {
    "plain": {},
    "attn_after_conv1": dict(attention_stages=S34, attention_position="after_conv1", attention_cfg=TINY_ATTN),
    "attn_after_conv2": dict(attention_stages=S34, attention_position="after_conv2", attention_cfg=TINY_ATTN),
    "attn_after_conv3": dict(attention_stages=S34, attention_position="after_conv3", attention_cfg=TINY_ATTN),
    "dcn": dict(dcn_stages=S234),
    "dcn_v2": dict(dcn_stages=S234, dcn_modulated=True),
    "attn_dcn": dict(attention_stages=S34, attention_cfg=dict(TINY_ATTN, attention_type="0010"), dcn_stages=S234),
    "resnext": dict(groups=4, width_per_group=8, dcn_stages=S234, attention_stages=S34, attention_cfg=TINY_ATTN),
}


@pytest.mark.parametrize("name", list(WIRINGS))
@pytest.mark.parametrize("size", [(50, 70)])  # not multiples of 32: every stride rounds up
def test_feature_shapes_and_strides(name, size):
    model = tiny(layers=(1, 2, 1, 1), **WIRINGS[name]).eval()
    h, w = size
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert model.out_channels == [64, 128, 256, 512]
    assert len(feats) == 4
    for f, c, s in zip(feats, model.out_channels, (4, 8, 16, 32)):
        # every stride-2 step (7x7 conv, max-pool, 3x3 convs, 1x1 downsample) rounds up
        assert f.shape == (1, c, -(-h // s), -(-w // s)), name
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("position, widths", [("after_conv1", (64, 128)), ("after_conv2", (64, 128)),
                                              ("after_conv3", (256, 512))])
def test_attention_input_width_follows_position(position, widths):
    model = tiny(attention_stages=S34, attention_position=position, attention_cfg=TINY_ATTN)
    assert not hasattr(model.layer2[0], "gen_attention_block")
    assert model.layer3[0].gen_attention_block.value_conv.in_channels == widths[0]
    assert model.layer4[0].gen_attention_block.value_conv.in_channels == widths[1]


def test_r50_r101_resnext_match_torchvision_names_and_shapes():
    """Same names and shapes as torchvision (minus fc), so its ImageNet weights load as they are."""
    for ours, theirs in [(resnet50(), torchvision.models.resnet50()),
                         (resnet101(), torchvision.models.resnet101()),
                         (resnet50(groups=32, width_per_group=4), torchvision.models.resnext50_32x4d())]:
        assert torchvision_keys(ours) == torchvision_keys(theirs)
    assert resnet50().out_channels == [256, 512, 1024, 2048]
    assert resnet101().out_channels == [256, 512, 1024, 2048]
    # ResNeXt 32x4d: the 3x3 width of layer1 is 32 groups x 4 = 128, layer4 1024
    rx = resnet50(groups=32, width_per_group=4)
    assert rx.layer1[0].conv2.weight.shape == (128, 4, 3, 3)
    assert rx.layer4[0].conv2.weight.shape == (1024, 32, 3, 3)


@pytest.mark.parametrize("groups, width_per_group", [(1, 64), (4, 8)])
def test_features_equal_torchvision_resnet_with_the_same_weights(groups, width_per_group):
    """torchvision's weights give torchvision's features: same stem, same block arithmetic, same strides."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1], groups=groups,
                                              width_per_group=width_per_group).eval()
    ours = ResNet((1, 2, 1, 1), groups=groups, width_per_group=width_per_group).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["fc.bias", "fc.weight"]
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        feats = ours(x)
        y = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))
        for layer, f in zip((theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4), feats):
            y = layer(y)
            torch.testing.assert_close(f, y)


def test_base_width_scales_every_width():
    model = ResNet((1, 1, 1, 1), base_width=8, stem_width=12)
    assert model.conv1.weight.shape == (12, 3, 7, 7)
    assert model.layer1[0].conv1.weight.shape == (8, 12, 1, 1)
    assert model.out_channels == [32, 64, 128, 256]


# --------------------------------------------------------------------------------------------- block order
class Recorder(nn.Module):
    """Stands in for the attention: records its input and adds 1, so its effect on the output is visible."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        assert x.shape[1] == self.channels
        self.seen = x.clone()
        return x + 1


@pytest.mark.parametrize("position", ["after_conv1", "after_conv2", "after_conv3"])
def test_bottleneck_applies_attention_at_its_position(position):
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = Bottleneck(8, 4, 2, down, attention=Recorder, attention_position=position).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        out = block(x)
        a = block.relu(block.bn1(block.conv1(x)))
        if position == "after_conv1":
            assert torch.equal(block.gen_attention_block.seen, a)
            a = a + 1
        b = block.relu(block.bn2(block.conv2(a)))
        if position == "after_conv2":  # already downsampled by the stride-2 conv2
            assert block.gen_attention_block.seen.shape == (2, 4, 5, 5)
            assert torch.equal(block.gen_attention_block.seen, b)
            b = b + 1
        c = block.bn3(block.conv3(b))
        if position == "after_conv3":
            assert torch.equal(block.gen_attention_block.seen, c)
            c = c + 1
        assert torch.allclose(out, torch.relu(c + block.downsample(x)))


def test_zero_gamma_attention_backbone_equals_plain_backbone():
    plain = tiny(dcn_stages=S234).eval()
    attn = tiny(dcn_stages=S234, attention_stages=S34, attention_cfg=TINY_ATTN).eval()
    missing, unexpected = attn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".gen_attention_block." in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(attn(x), plain(x)):
            torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------- DCN
@pytest.mark.parametrize("stride, groups", [(1, 1), (2, 1), (2, 2)])
def test_dcn_with_zero_offsets_is_the_plain_conv(stride, groups):
    torch.manual_seed(0)
    dcn = DeformConvPack(4, 6, 3, stride=stride, padding=1, groups=groups)
    assert dcn.weight.shape == (6, 4 // groups, 3, 3) and dcn.bias is None
    assert dcn.conv_offset.weight.shape == (18, 4, 3, 3) and dcn.conv_offset.stride == (stride, stride)
    assert not dcn.conv_offset.weight.any() and not dcn.conv_offset.bias.any()
    x = torch.randn(2, 4, 11, 10)
    ref = nn.functional.conv2d(x, dcn.weight, stride=stride, padding=1, groups=groups)
    torch.testing.assert_close(dcn(x), ref, rtol=1e-5, atol=1e-5)


def test_modulated_dcn_with_zero_logits_is_half_the_conv():
    torch.manual_seed(0)
    dcn = DeformConvPack(4, 6, 3, stride=2, padding=1, modulated=True)
    assert dcn.conv_offset.weight.shape == (27, 4, 3, 3)
    x = torch.randn(2, 4, 9, 9)
    ref = nn.functional.conv2d(x, dcn.weight, stride=2, padding=1)
    torch.testing.assert_close(dcn(x), 0.5 * ref, rtol=1e-5, atol=1e-5)


def test_dcn_offset_channels_are_dy_dx_pairs():
    """A constant offset dx = +1 on every tap samples one pixel further right: out[j] = sum_k w[k] x[j + k]."""
    torch.manual_seed(0)
    dcn = DeformConvPack(3, 5, 3, padding=1)
    with torch.no_grad():
        dcn.conv_offset.bias[1::2] = 1.0  # odd channels are x offsets
    x = torch.randn(1, 3, 8, 8)
    ref = nn.functional.conv2d(nn.functional.pad(x, (0, 2, 1, 1)), dcn.weight)  # taps at x + 0..2, y - 1..1
    torch.testing.assert_close(dcn(x), ref, rtol=1e-5, atol=1e-5)


def test_modulated_dcn_channel_order_offsets_then_mask():
    """MMDetection's order: chunks 1-2 are the 18 offsets, chunk 3 the 9 mask logits."""
    torch.manual_seed(0)
    dcn = DeformConvPack(3, 5, 3, padding=1, modulated=True)
    with torch.no_grad():
        dcn.conv_offset.bias[18:] = 20.0  # mask ~1: the plain conv
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(dcn(x), nn.functional.conv2d(x, dcn.weight, padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("modulated", [False, True])
def test_dcn_gradcheck_with_learned_offsets(modulated):
    torch.manual_seed(0)
    dcn = DeformConvPack(2, 2, 3, stride=2, padding=1, modulated=modulated).double()
    with torch.no_grad():  # fractional offsets away from the kinks of bilinear sampling at integer positions
        dcn.conv_offset.weight.normal_(0, 0.1)
        dcn.conv_offset.bias.uniform_(0.2, 0.4)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dcn, (x,), atol=1e-5)


def test_dcn_block_equals_plain_block_and_offsets_get_gradients():
    torch.manual_seed(0)
    plain = tiny().eval()
    dcn = tiny(dcn_stages=S234).eval()
    missing, _ = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(f"layer{i}.0.conv2.conv_offset.{p}" for i in (2, 3, 4) for p in ("weight", "bias"))
    assert not hasattr(dcn.layer1[0].conv2, "conv_offset")
    assert dcn.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    out = dcn(x)
    for a, b in zip(out, plain(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sum(f.sum() for f in out).backward()
    # zero-initialised offsets still receive gradients, so training can move them
    assert dcn.layer3[0].conv2.conv_offset.weight.grad.abs().sum() > 0


def test_dcn_under_cpu_autocast():
    model = tiny(dcn_stages=S234).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model(torch.randn(1, 3, 32, 32))
    assert all(torch.isfinite(f.float()).all() for f in feats)


def test_with_cp_gives_the_same_outputs_and_gradients():
    kw = dict(dcn_stages=S234, attention_stages=S34, attention_cfg=TINY_ATTN, frozen_stages=1, norm_eval=True)
    ref, cp = tiny(**kw).train(), tiny(with_cp=True, **kw).train()
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 32, 32)
    outs = [sum((f * f).sum() for f in m(x)) for m in (ref, cp)]
    torch.testing.assert_close(outs[0], outs[1])
    for o in outs:
        o.backward()
    for (name, a), b in zip(ref.named_parameters(), cp.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    assert cp.layer2[0].conv1.weight.grad.abs().sum() > 0  # checkpointed behind the frozen layer1


# --------------------------------------------------------------------------------------------- freezing
def _bottleneck_params(cin, width, cout, project):
    """Parameters of one bottleneck: three convs and three BNs (weight + bias), plus the projection."""
    n = cin * width + width * width * 9 + width * cout + 2 * (width + width + cout)
    return n + (cin * cout + 2 * cout if project else 0)


# Tiny model (1, 1, 1, 1), base 16, stem 16, hand-computed: stem 16*3*7*7 + 2*16; stage i: planes 16*2**i
STEM = 16 * 3 * 49 + 32
STAGES = [_bottleneck_params(16, 16, 64, True), _bottleneck_params(64, 32, 128, True),
          _bottleneck_params(128, 64, 256, True), _bottleneck_params(256, 128, 512, True)]


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("frozen", [-1, 0, 1, 2, 4])
def test_frozen_stages_trainable_counts(frozen):
    model = tiny(frozen_stages=frozen)
    assert sum(p.numel() for p in model.parameters()) == STEM + sum(STAGES)
    expected = STEM + sum(STAGES)
    if frozen >= 0:
        expected -= STEM + sum(STAGES[:frozen])
    assert _trainable(model) == expected
    model.train()
    frozen_mods = [model.bn1] + [getattr(model, f"layer{i}") for i in range(1, frozen + 1)] if frozen >= 0 else []
    for m in frozen_mods:
        assert all(not sub.training for sub in m.modules())
    if frozen < 4:
        assert model.layer4.training and model.layer4[0].bn1.training


def test_frozen_r50_counts_match_torchvision_arithmetic():
    """R-50 without fc has 23,508,032 parameters (torchvision's 25,557,032 minus 2048*1000+1000)."""
    total = 25_557_032 - (2048 * 1000 + 1000)
    stem = 64 * 3 * 49 + 128
    layer1 = _bottleneck_params(64, 64, 256, True) + 2 * _bottleneck_params(256, 64, 256, False)
    assert sum(p.numel() for p in resnet50().parameters()) == total
    assert _trainable(resnet50(frozen_stages=1)) == total - stem - layer1
    assert _trainable(resnet50(frozen_stages=4)) == 0


def test_frozen_stage_includes_its_dcn_and_attention():
    model = tiny(frozen_stages=4, dcn_stages=S234, attention_stages=S34, attention_cfg=TINY_ATTN)
    assert _trainable(model) == 0


def test_norm_eval_keeps_bn_statistics_but_trains_affine():
    model = tiny(norm_eval=True, frozen_stages=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer2[0].bn1.weight.requires_grad and not model.layer1[0].bn1.weight.requires_grad
    assert model.layer2.training  # the convs' module stays in train mode
    sum(f.sum() for f in out).backward()
    assert model.layer2[0].bn1.weight.grad is not None

    plain = tiny(norm_eval=False).train()
    before = plain.layer4[0].bn3.running_mean.clone()
    plain(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, plain.layer4[0].bn3.running_mean)


def test_norm_layer_is_injectable():
    model = tiny(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    assert isinstance(model.layer3[0].bn2, torchvision.ops.FrozenBatchNorm2d)
    assert model(torch.randn(1, 3, 32, 32))[3].shape == (1, 512, 1, 1)


# --------------------------------------------------------------------------------------------- MMDetection layout
def _mmdet_backbone_keys(attention_type, dcn):
    """The backbone part of an MMDetection empirical-attention checkpoint (mmdet_faster_rcnn.md), with shapes."""
    keys = torchvision_keys(torchvision.models.resnet50())
    widths = {2: 128, 3: 256, 4: 512}
    blocks = {2: 4, 3: 6, 4: 3}
    for stage, n in blocks.items():
        c = widths[stage]
        for i in range(n):
            pre = f"layer{stage}.{i}."
            if dcn:
                keys[pre + "conv2.conv_offset.weight"] = (18, c, 3, 3)
                keys[pre + "conv2.conv_offset.bias"] = (18,)
            if stage == 2:
                continue
            a = pre + "gen_attention_block."
            e1, e2, e3, e4 = (b == "1" for b in attention_type)
            if e1 or e2:
                keys[a + "query_conv.weight"] = (c, c, 1, 1)
            if e1 or e3:
                keys[a + "key_conv.weight"] = (c, c, 1, 1)
            keys[a + "value_conv.weight"] = (c, c, 1, 1)
            if e2 or e4:
                keys[a + "appr_geom_fc_x.weight"] = (c, c // 2)
                keys[a + "appr_geom_fc_y.weight"] = (c, c // 2)
            if e3:
                keys[a + "appr_bias"] = (c,)
            if e4:
                keys[a + "geom_bias"] = (c,)
            keys[a + "proj_conv.weight"] = (c, c, 1, 1)
            keys[a + "proj_conv.bias"] = (c,)
            keys[a + "gamma"] = (1,)
    return keys


@pytest.mark.parametrize("attention_type, dcn", [("1111", True), ("0010", False)])
def test_seed_backbone_key_layout_matches_mmdetection(attention_type, dcn):
    model = resnet50(attention_stages=S34, attention_position="after_conv2",
                     attention_cfg=dict(spatial_range=-1, num_heads=8, attention_type=attention_type, kv_stride=2),
                     dcn_stages=S234 if dcn else NO, frozen_stages=1, norm_eval=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _mmdet_backbone_keys(attention_type, dcn)
    assert sorted(set(ours) ^ set(expected)) == []
    assert ours == expected
    assert not model.layer3[0].gen_attention_block.gamma.any()


def test_attention_heads_need_not_divide_the_width():
    """mmcv's rule: 7 heads on the 64/128-channel attention inputs are 9/18 channels wide, 63/126 projected."""
    model = tiny(attention_stages=S34, attention_cfg=dict(TINY_ATTN, num_heads=7)).eval()
    for layer, width, projected in ((model.layer3, 64, 63), (model.layer4, 128, 126)):
        block = layer[0].gen_attention_block
        assert (block.value_conv.in_channels, block.value_conv.out_channels) == (width, projected)
        assert (block.proj_conv.in_channels, block.proj_conv.out_channels) == (projected, width)
        with torch.no_grad():
            block.gamma.fill_(0.5)  # let the attention branch act
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 48, 40))
    assert feats[3].shape == (1, 512, 2, 2) and torch.isfinite(feats[3]).all()


# --------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, name", [
    (dict(layers=(1, 1, 1)), "layers"),
    (dict(layers=(1, 0, 1, 1)), "layers"),
    (dict(attention_stages=(True, False, True)), "attention_stages"),
    (dict(attention_stages="FFTT"), "attention_stages"),
    (dict(dcn_stages=(False, 2, True, True)), "dcn_stages"),
    (dict(attention_position="after_conv4"), "attention_position"),
    (dict(attention_stages=S34, attention_cfg=dict(num_heads=65)), "num_heads"),  # > 64, the layer3 width
    (dict(attention_stages=S34, attention_cfg=dict(num_heads=2, heads=3)), "attention_cfg"),
    (dict(attention_stages=S34, attention_cfg=dict(in_channels=64)), "attention_cfg"),
    (dict(attention_stages=S34, attention_cfg="1111"), "attention_cfg"),
    (dict(frozen_stages=5), "frozen_stages"),
    (dict(base_width=0), "base_width"),
    (dict(groups=4, width_per_group=2), "width_per_group"),
])
def test_bad_wiring_raises_value_error_naming_the_argument(kwargs, name):
    kwargs = {"layers": (1, 1, 1, 1), **TINY, **kwargs}
    with pytest.raises(ValueError, match=name):
        ResNet(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_dcn_and_attention():
    model = tiny(dcn_stages=S234, dcn_modulated=True, attention_stages=S34, attention_cfg=TINY_ATTN).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-zero offsets, masks and gamma so every path is exercised
            p.add_(0.01 * torch.randn_like(p))
        x = torch.randn(2, 3, 64, 96)
        cpu = model(x)
        gpu = model.cuda()(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            amp = model(x.cuda())
    for a, b, c in zip(cpu, gpu, amp):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)
        assert torch.isfinite(c.float()).all()
