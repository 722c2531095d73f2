"""The cases of mmcv's own test file for the module, written for ours: mmcv's default 9 heads on 16 and 256
channels (heads that do not divide the width), each attention type, a spatial range, query/key strides.

Each asserts the output shape, mmcv's parameter layout (written out by hand: ``in_channels // 9`` channels a
head, ``9 * (in_channels // 9)`` projected channels, ``proj_conv`` back to ``in_channels``) and, in float64 with
a non-zero ``gamma``, equality with the formula oracle.
"""

from __future__ import annotations

import pytest
import torch
from attention_oracle import oracle_forward

from genattn.attention import GeneralizedAttention

# 16 channels, 9 heads: 1-channel heads, 9 projected channels; D = 16, so the position Linears take 8 features.
LAYOUT_16 = {
    "query_conv.weight": (9, 16, 1, 1), "key_conv.weight": (9, 16, 1, 1), "value_conv.weight": (9, 16, 1, 1),
    "appr_geom_fc_x.weight": (9, 8), "appr_geom_fc_y.weight": (9, 8), "appr_bias": (9,), "geom_bias": (9,),
    "proj_conv.weight": (16, 9, 1, 1), "proj_conv.bias": (16,), "gamma": (1,),
}
# 256 channels, 9 heads: 28-channel heads, 252 projected channels, D = 256.
LAYOUT_256 = {
    "query_conv.weight": (252, 256, 1, 1), "key_conv.weight": (252, 256, 1, 1),
    "value_conv.weight": (252, 256, 1, 1), "appr_geom_fc_x.weight": (252, 128),
    "appr_geom_fc_y.weight": (252, 128), "appr_bias": (252,), "geom_bias": (252,),
    "proj_conv.weight": (256, 252, 1, 1), "proj_conv.bias": (256,), "gamma": (1,),
}
ALWAYS = {"value_conv.weight", "proj_conv.weight", "proj_conv.bias", "gamma"}
TERM_KEYS = {
    "1000": {"query_conv.weight", "key_conv.weight"},
    "0100": {"query_conv.weight", "appr_geom_fc_x.weight", "appr_geom_fc_y.weight"},
    "0010": {"key_conv.weight", "appr_bias"},
    "0001": {"appr_geom_fc_x.weight", "appr_geom_fc_y.weight", "geom_bias"},
}


def _layout(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _check_output(m, shape):
    m = m.double()
    with torch.no_grad():
        m.gamma.fill_(0.7)
    x = torch.randn(*shape, dtype=torch.float64)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, oracle_forward(m, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attention_type", ["1000", "0100", "0010", "0001"])
def test_types_with_default_heads(attention_type):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, attention_type=attention_type)
    assert (m.num_heads, m.qk_embed_dim, m.v_dim) == (9, 1, 1)
    assert _layout(m) == {k: LAYOUT_16[k] for k in ALWAYS | TERM_KEYS[attention_type]}
    _check_output(m, (2, 16, 7, 6))  # non-square: mmcv's '0100' would crash here


def test_spatial_range_256_channels():
    torch.manual_seed(0)
    m = GeneralizedAttention(256, spatial_range=10)
    assert (m.num_heads, m.qk_embed_dim) == (9, 28)
    assert _layout(m) == LAYOUT_256  # and no local_constraint_map: windows are computed on the fly
    _check_output(m, (1, 256, 6, 5))


@pytest.mark.parametrize("kwargs", [dict(q_stride=2), dict(kv_stride=2), dict(q_stride=2, kv_stride=1)],
                         ids=["q_stride2", "kv_stride2", "q_stride2_kv1"])
def test_strides_with_default_heads(kwargs):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, **kwargs)
    assert _layout(m) == LAYOUT_16
    _check_output(m, (2, 16, 7, 6))


def test_zero_width_head_is_refused():
    with pytest.raises(ValueError, match=r"num_heads \(9\) must not exceed in_channels \(8\)"):
        GeneralizedAttention(8)
