"""Construction, parameters, argument checking, path choice and the visualisation hook."""

from __future__ import annotations

import math

import pytest
import torch
from attention_oracle import oracle_energy

from genattn import GeneralizedAttention as TopLevel
from genattn.attention import GeneralizedAttention
from genattn.attention import paths
from genattn.attention.paths import applicable, choose
from genattn.attention.position import axis_window, sinusoidal_embedding

MMCV_1111 = {
    "query_conv.weight": (256, 256, 1, 1), "key_conv.weight": (256, 256, 1, 1), "value_conv.weight": (256, 256, 1, 1),
    "appr_geom_fc_x.weight": (256, 128), "appr_geom_fc_y.weight": (256, 128), "appr_bias": (256,),
    "geom_bias": (256,), "proj_conv.weight": (256, 256, 1, 1), "proj_conv.bias": (256,), "gamma": (1,),
}
MMCV_0010 = {
    "key_conv.weight": (512, 512, 1, 1), "value_conv.weight": (512, 512, 1, 1), "appr_bias": (512,),
    "proj_conv.weight": (512, 512, 1, 1), "proj_conv.bias": (512,), "gamma": (1,),
}


def test_exported_from_package():
    assert TopLevel is GeneralizedAttention


@pytest.mark.parametrize("attention_type, channels, expected", [("1111", 256, MMCV_1111), ("0010", 512, MMCV_0010)])
def test_mmcv_state_dict_layout(attention_type, channels, expected):
    m = GeneralizedAttention(channels, num_heads=8, attention_type=attention_type, kv_stride=2)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected


@pytest.mark.parametrize("attention_type", ["1000", "0100", "0010", "0001", "1010", "0101"])
def test_parameters_only_for_enabled_terms(attention_type):
    e1, e2, e3, e4 = (c == "1" for c in attention_type)
    m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type)
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    expected = {"value_conv", "proj_conv", "gamma"}
    expected |= {"query_conv"} if e1 or e2 else set()
    expected |= {"key_conv"} if e1 or e3 else set()
    expected |= {"appr_geom_fc_x", "appr_geom_fc_y"} if e2 or e4 else set()
    expected |= {"appr_bias"} if e3 else set()
    expected |= {"geom_bias"} if e4 else set()
    assert names == expected


def test_initialisation():
    torch.manual_seed(0)
    m = GeneralizedAttention(64, num_heads=4)
    bound = math.sqrt(3 / 64)  # kaiming-uniform, leaky_relu a=1 (gain 1), fan_in 64
    for name in ("query_conv", "key_conv", "value_conv", "proj_conv"):
        w = getattr(m, name).weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    fc_bound = math.sqrt(3 / 32)  # fan_in = D/2 = 32
    assert m.appr_geom_fc_x.weight.abs().max() <= fc_bound
    assert m.appr_geom_fc_x.weight.abs().max() > 0.9 * fc_bound
    assert torch.all(m.proj_conv.bias == 0) and torch.all(m.gamma == 0)
    uv_bound = 1 / math.sqrt(2 * 16)
    for p in (m.appr_bias, m.geom_bias):
        assert p.abs().max() <= uv_bound and p.abs().max() > 0.8 * uv_bound
    x = torch.randn(1, 64, 5, 6)
    assert torch.equal(m(x), x)  # gamma = 0: every block starts as the identity


@pytest.mark.parametrize("kwargs, words", [
    (dict(attention_type="111"), ["attention_type", "'111'"]),
    (dict(attention_type="11110"), ["attention_type", "'11110'"]),  # mmcv ignores the fifth character
    (dict(attention_type="1121"), ["attention_type", "'1121'"]),  # mmcv reads '2' as '1'
    (dict(attention_type=1111), ["attention_type", "1111"]),
    (dict(attention_type=[1, 0, 1, 0]), ["attention_type", "[1, 0, 1, 0]"]),  # mmcv takes a list
    (dict(num_heads=17), ["num_heads (17)", "in_channels (16)"]),  # a zero-width head
    (dict(num_heads=0), ["num_heads", "0"]),
    (dict(num_heads=True), ["num_heads", "True"]),  # mmcv runs it as one head
    (dict(kv_stride=0), ["kv_stride", "0"]),
    (dict(q_stride=-1), ["q_stride", "-1"]),
    (dict(kv_stride=1.5), ["kv_stride", "1.5"]),
    (dict(position_embedding_dim=6), ["position_embedding_dim", "6"]),
    (dict(position_embedding_dim=16.5, attention_type="1010"), ["position_embedding_dim", "16.5"]),
    (dict(position_magnitude=float("inf")), ["position_magnitude", "inf"]),
    (dict(position_magnitude=float("nan")), ["position_magnitude", "nan"]),
    (dict(spatial_range=0.5), ["spatial_range", "0.5"]),
    (dict(impl="fast"), ["impl", "'fast'"]),
    (dict(impl="key_only"), ["impl", "key_only", "'1111'"]),
    (dict(impl="key_only", attention_type="0010", spatial_range=1), ["key_only", "spatial_range=1"]),
    (dict(impl="separable"), ["separable", "'1111'"]),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        GeneralizedAttention(16, **{"num_heads": 2, **kwargs})
    for word in words:
        assert word in str(info.value)


def test_embedding_dim_only_checked_with_position_terms():
    GeneralizedAttention(18, num_heads=2, attention_type="1010")  # D = 18 is fine without E2/E4
    with pytest.raises(ValueError, match=r"position_embedding_dim .* got 18 \(in_channels\)"):
        GeneralizedAttention(18, num_heads=2, attention_type="1001")


def test_integral_floats_and_any_negative_range_are_accepted():
    """mmcv runs kv_stride=1.0 and spatial_range=-0.5 (its test is only >= 0); integral floats mean their int."""
    plain = GeneralizedAttention(16, num_heads=2, kv_stride=2, position_embedding_dim=8)
    floats = GeneralizedAttention(16.0, num_heads=2.0, kv_stride=2.0, q_stride=1.0, spatial_range=-0.5,
                                  position_embedding_dim=8.0)
    assert repr(floats) == repr(plain)
    assert GeneralizedAttention(16, num_heads=2, position_embedding_dim=-1.0).position_embedding_dim == 16
    assert GeneralizedAttention(16, num_heads=2, spatial_range=3.0).spatial_range == 3


@pytest.mark.parametrize("x, words", [
    (torch.zeros(16, 5, 5), ["4-D", "(16, 5, 5)"]),
    (torch.zeros(1, 8, 5, 5), ["8 channels", "in_channels=16"]),
    (torch.zeros(1, 16, 0, 5), ["spatial", "(0, 5)"]),
])
def test_bad_input(x, words):
    m = GeneralizedAttention(16, num_heads=2)
    with pytest.raises(ValueError) as info:
        m(x)
    for word in words:
        assert word in str(info.value)


def test_impl_attribute_is_checked():
    m = GeneralizedAttention(16, num_heads=2, attention_type="0001")
    m.impl = "separable"
    with pytest.raises(ValueError, match="key_only"):
        m.impl = "key_only"
    assert m.impl == "separable"


@pytest.mark.parametrize("attention_type", ["1111", "0010", "0001", "0100"])
def test_batch_zero(attention_type):
    m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type)
    for impl in ["auto", *applicable(attention_type, -1)]:
        m.impl = impl
        x = torch.zeros(0, 16, 5, 6, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("impl", ["auto", "materialize", "chunked", "sdpa", "key_only"])
def test_hand_computed_key_only(impl):
    """One channel, keys 0 and ln 3: attention (1/4, 3/4), so every output pixel gains 0.75 ln 3."""
    m = GeneralizedAttention(1, num_heads=1, attention_type="0010", kv_stride=1, impl=impl)
    with torch.no_grad():
        for p in (m.key_conv.weight, m.value_conv.weight, m.proj_conv.weight, m.appr_bias, m.gamma):
            p.fill_(1.0)
        m.proj_conv.bias.zero_()
    x = torch.tensor([[[[0.0, math.log(3.0)]]]])
    torch.testing.assert_close(m(x), x + 0.75 * math.log(3.0))


def test_sinusoidal_embedding_by_hand():
    emb = sinusoidal_embedding(torch.tensor([1.0]), 8)
    expected = [math.sin(1), math.sin(1 / 1000 ** 0.5), math.cos(1), math.cos(1 / 1000 ** 0.5)]
    torch.testing.assert_close(emb[0], torch.tensor(expected))


def test_axis_window_by_hand():
    # queries 0..4 (q_stride 1), keys every 2nd pixel, radius 1: mmcv's inclusive ranges
    got = axis_window(5, 3, 1, 2, 1, device=torch.device("cpu"))
    ranges = [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]
    expected = torch.tensor([[lo <= j <= hi for j in range(3)] for lo, hi in ranges])
    assert torch.equal(got, expected)


def test_auto_choice(monkeypatch):
    x = torch.zeros(2, 16, 5, 6)  # 30 queries x 9 keys
    cases = {("0010", -1): "key_only", ("0010", 1): "chunked", ("0001", -1): "separable", ("0001", 2): "separable",
             ("1111", -1): "chunked", ("0100", 1): "chunked", ("1000", -1): "sdpa", ("1010", -1): "sdpa",
             ("0000", -1): "key_only", ("0000", 1): "chunked"}
    for min_pairs, large in ((30 * 9, True), (30 * 9 + 1, False)):  # a map just at / just below the threshold
        monkeypatch.setattr(paths, "CHUNKED_MIN_PAIRS", min_pairs)
        for (attention_type, spatial_range), on_large in cases.items():
            m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type, spatial_range=spatial_range)
            expected = on_large if large or on_large != "chunked" else "sdpa"
            with torch.no_grad():  # inference and training choose alike
                assert choose("auto", attention_type, spatial_range, m.decompose(x)) == expected
            assert choose("auto", attention_type, spatial_range, m.decompose(x)) == expected


def test_mmcv_local_constraint_map_is_ignored():
    m = GeneralizedAttention(16, num_heads=2, spatial_range=2)
    state = dict(m.state_dict(), local_constraint_map=torch.zeros(4, 4, 2, 2, dtype=torch.uint8))
    m.load_state_dict(state)  # strict


@pytest.mark.parametrize("attention_type, kwargs, heads", [
    ("1111", dict(), 2), ("0110", dict(spatial_range=1), 2), ("1001", dict(q_stride=2), 2), ("0010", dict(), 2),
    ("1111", dict(), 9), ("0110", dict(spatial_range=1), 5), ("0000", dict(spatial_range=1), 3),
])
def test_point_attention_matches_oracle(attention_type, kwargs, heads):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, num_heads=heads, attention_type=attention_type, **kwargs).double()
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    y, x_ = 4, 3
    maps = m.point_attention(x, y, x_)
    qs = m.q_stride
    wq = -(-6 // qs)
    i = ((y + qs // 2) // qs) * wq + (x_ + qs // 2) // qs
    hk, wk = -(-7 // m.kv_stride), -(-6 // m.kv_stride)
    terms = {"all": attention_type}
    terms.update({f"E{b + 1}": "".join("1" if j == b else "0" for j in range(4))
                  for b in range(4) if attention_type[b] == "1"})
    assert set(maps) == set(terms)
    for key, bits in terms.items():
        want = torch.softmax(oracle_energy(m, x, bits)[:, :, i], dim=-1).view(2, heads, hk, wk)
        assert maps[key].shape == (2, heads, hk, wk)
        torch.testing.assert_close(maps[key], want, rtol=1e-9, atol=1e-9, msg=lambda s: f"{key}: {s}")


def test_point_attention_bad_pixel():
    m = GeneralizedAttention(16, num_heads=2)
    with pytest.raises(ValueError, match="x_"):
        m.point_attention(torch.zeros(1, 16, 4, 4), 1, 4)
