"""Every computation path equals the float64 formula oracle in outputs and in input and parameter gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_oracle import oracle_forward

from genattn.attention import GeneralizedAttention
from genattn.attention.paths import applicable

ALL_TYPES = ["".join(bits) for bits in itertools.product("01", repeat=4)]  # '0000' too: uniform attention
# E2-without-E4 types (mmcv's bug), a pure-content, a pure-position, a key-only and the no-term type.
FEW_TYPES = ["1111", "0100", "1110", "0001", "0010", "1000", "0000"]
TOL = dict(rtol=1e-9, atol=1e-9)


def _module(attention_type, channels=16, heads=2, **kwargs):
    torch.manual_seed(0)
    m = GeneralizedAttention(channels, num_heads=heads, attention_type=attention_type, **kwargs).double()
    with torch.no_grad():  # gamma starts at 0, which would hide the attention branch entirely
        m.gamma.fill_(0.7)
    return m


def _grads(m, x, out, grad_out):
    return torch.autograd.grad(out, [x, *m.parameters()], grad_out)


def check_paths(m: GeneralizedAttention, shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ref = oracle_forward(m, x)
    grad_out = torch.randn_like(ref)
    ref_grads = _grads(m, x, ref, grad_out)
    names = ["x", *(n for n, _ in m.named_parameters())]
    for impl in applicable(m.attention_type, m.spatial_range):
        m.impl = impl
        out = m(x)
        torch.testing.assert_close(out, ref, **TOL, msg=lambda s: f"impl={impl} output: {s}")
        for name, got, want in zip(names, _grads(m, x, out, grad_out), ref_grads):
            torch.testing.assert_close(got, want, **TOL, msg=lambda s: f"impl={impl} grad {name}: {s}")


@pytest.mark.parametrize("attention_type", ALL_TYPES)
@pytest.mark.parametrize("size, kv_stride", [((6, 6), 2), ((5, 7), 2), ((1, 9), 1)], ids=["square", "odd", "1xN"])
def test_all_types_all_paths(attention_type, size, kv_stride):
    check_paths(_module(attention_type, kv_stride=kv_stride), (2, 16, *size))


VARIATIONS = {
    "q_stride2": dict(kwargs=dict(q_stride=2, kv_stride=2), size=(7, 6)),
    "q_stride2_kv1": dict(kwargs=dict(q_stride=2, kv_stride=1), size=(5, 4)),
    "window1": dict(kwargs=dict(spatial_range=1, kv_stride=2), size=(7, 9)),
    "window0_kv1": dict(kwargs=dict(spatial_range=0, kv_stride=1), size=(4, 5)),
    "window2_q2": dict(kwargs=dict(spatial_range=2, q_stride=2, kv_stride=2), size=(9, 6)),
    "magnitude": dict(kwargs=dict(position_magnitude=0.37), size=(6, 5)),
    "embed_dim": dict(kwargs=dict(position_embedding_dim=8, position_magnitude=3), size=(5, 6)),
    "heads4": dict(kwargs=dict(position_embedding_dim=24), heads=4, size=(4, 6)),
    # num_heads not dividing the 16 channels (mmcv's rule): heads of 16 // h channels, 16 // h * h projected.
    "heads9_uneven": dict(kwargs=dict(), heads=9, size=(5, 7)),  # mmcv's default heads: 1-channel heads, 9 wide
    "heads3_window": dict(kwargs=dict(spatial_range=1, kv_stride=1), heads=3, size=(4, 5)),  # 5 x 3 = 15 wide
    "heads6_q2": dict(kwargs=dict(q_stride=2, kv_stride=2, position_magnitude=2), heads=6, size=(7, 6)),  # 12
}


@pytest.mark.parametrize("attention_type", FEW_TYPES)
@pytest.mark.parametrize("variation", list(VARIATIONS))
def test_variations(attention_type, variation):
    cfg = VARIATIONS[variation]
    m = _module(attention_type, heads=cfg.get("heads", 2), **cfg["kwargs"])
    check_paths(m, (2, 16, *cfg["size"]))


def test_large_energies_window():
    """Energies of a few hundred: the masked sdpa path must still give exact zeros outside the window."""
    m = _module("1111", spatial_range=1, kv_stride=1)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(6)
    check_paths(m, (1, 16, 5, 6))


def test_chunked_blocks_do_not_matter():
    """Blocks of one query, of several, of whole (image, head) pairs: same outputs and gradients."""
    from genattn.attention.paths.chunked import blocks, chunked_attention

    m = _module("1111", spatial_range=1)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    t = m.decompose(x)
    pair = t.nq * t.nk
    whole = chunked_attention(t, elements=pair * t.batch * t.heads)
    assert len(blocks(t, pair * t.batch * t.heads)[0]) == 1
    for elements in (1, 3 * t.nk, 7 * t.nk, pair, 3 * pair):
        torch.testing.assert_close(chunked_attention(t, elements=elements), whole, **TOL)
    grad_out = torch.randn_like(whole)
    inputs = [v for v in (t.query, t.key, t.value, t.key_bias, t.bias_x, t.bias_y)]
    ref = torch.autograd.grad(whole, inputs, grad_out, retain_graph=True)
    for elements in (1, 3 * t.nk, 3 * pair):
        got = torch.autograd.grad(chunked_attention(t, elements=elements), inputs, grad_out, retain_graph=True)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("attention_type", ["1111", "0110"])
def test_chunked_worker_threads(attention_type):
    """With several intra-op threads the chunked path shares blocks out to worker threads: still exact."""
    import genattn.attention.paths.chunked as chunked

    torch.set_num_threads(2)  # the autouse fixture restores the setting
    m = _module(attention_type, spatial_range=1)
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64, requires_grad=True)
    ref = oracle_forward(m, x)
    grad_out = torch.randn_like(ref)
    ref_grads = _grads(m, x, ref, grad_out)
    m.impl = "chunked"
    before = chunked.BLOCK_ELEMENTS
    chunked.BLOCK_ELEMENTS = 4 * 20  # 4 queries of one (image, head) pair a block: several per worker
    try:
        out = m(x)
        grads = _grads(m, x, out, grad_out)
        with torch.inference_mode():  # the workers are other threads: they must inherit inference mode
            inferred = m(x.detach())
    finally:
        chunked.BLOCK_ELEMENTS = before
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(inferred, ref.detach(), **TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL)
