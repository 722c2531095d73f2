"""torch.compile of GeneralizedAttention: one graph (``fullgraph=True``) for every path in inference and training,
equal to eager; the chunked path's custom operators pass ``torch.library.opcheck``; with dynamic shapes a third
map size compiles nothing new.

Cost (loaded 2-core CPU, cold inductor cache; about 75 s in all): the ``aot_eager`` backend (dynamo + AOT
autograd with fake tensors: what breaks a graph or a fake implementation fails here) for the path matrix, 1-3 s
per case (flex 7-20 s: its kernel is compiled by inductor even so); inductor for the chunked path at four map
sizes, inference, ~20 s.
"""

from __future__ import annotations

import pytest
import torch
from attention_oracle import oracle_forward

from genattn.attention import GeneralizedAttention
from genattn.attention.paths import chunked
from genattn.attention.terms import Terms

CHUNKED_OP = torch.ops.genattn.chunked_attention.default


class Recorder:
    """A torch.compile backend that keeps every graph dynamo hands it, then compiles it with ``compiler``."""

    def __init__(self, compiler: str = "aot_eager"):
        self.graphs = []
        self.compiler = compiler

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        if self.compiler == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return torch._dynamo.lookup_backend(self.compiler)(gm, example_inputs)

    def calls(self, op) -> int:
        return sum(node.target is op for gm in self.graphs for node in gm.graph.nodes)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Compiled code is cached per code object (GeneralizedAttention.forward) across modules: start clean so that
    # each test's compile count and recompile limit are its own.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _module(attention_type, spatial_range, impl, dtype):
    torch.manual_seed(0)
    m = GeneralizedAttention(16, num_heads=2, attention_type=attention_type, spatial_range=spatial_range,
                             impl=impl).to(dtype)
    with torch.no_grad():
        m.gamma.fill_(0.7)
        for p in m.parameters():  # larger energies than the initialisation's: the softmax is far from uniform
            p.mul_(3)
    return m


# Every path, with the terms and windows that make each do all its work; 'auto' as it picks on a CPU.
CASES = [
    ("chunked", "1111", 1), ("chunked", "1010", -1), ("chunked", "0001", -1),
    ("sdpa", "1111", 1), ("sdpa", "1000", -1),
    ("materialize", "1111", 1),
    ("flex", "1111", 1), ("flex", "0100", -1),
    ("key_only", "0010", -1), ("key_only", "0000", -1),
    ("separable", "0001", 1),
    ("auto", "1111", -1), ("auto", "0010", -1), ("auto", "0001", 2),
]


@pytest.mark.parametrize("impl, attention_type, spatial_range", CASES)
def test_fullgraph_compile_equals_eager(impl, attention_type, spatial_range):
    # FlexAttention's CPU kernel takes float32 only; the others run in float64, where compiled and eager agree
    # to rounding and the oracle is exact.
    dtype = torch.float32 if impl == "flex" else torch.float64
    # float32: FlexAttention's kernel accumulates in another order than eager's (its inputs are O(1-10)).
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    m = _module(attention_type, spatial_range, impl, dtype)
    x = torch.randn(2, 16, 5, 7, dtype=dtype, requires_grad=True)
    rec = Recorder()
    compiled = torch.compile(m, fullgraph=True, backend=rec)

    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), **tol)
    out = compiled(x)
    ref = m(x)
    torch.testing.assert_close(out, ref, **tol)
    grad_out = torch.randn_like(ref)
    params = [x, *m.parameters()]
    got = torch.autograd.grad(out, params, grad_out)
    want = torch.autograd.grad(ref, params, grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    if dtype == torch.float64:  # and both equal the formula
        torch.testing.assert_close(out, oracle_forward(m, x), rtol=1e-9, atol=1e-9)
    assert len(rec.graphs) == 2  # inference and training: one graph each
    if impl == "chunked":  # the path ran as the custom op, inside the graph
        assert rec.calls(CHUNKED_OP) == 2


def test_auto_decides_at_trace_time():
    """'auto' picks chunked on a large map at trace time: the op is in the graph, with no guard around it."""
    m = _module("1111", -1, "auto", torch.float32)
    x = torch.randn(1, 16, 40, 52)  # 2080 x 520 query-key pairs per image and head: chunked's side
    t = m.decompose(x)
    assert t.nq * t.nk >= 2 ** 19
    rec = Recorder()
    with torch.no_grad():
        out = torch.compile(m, fullgraph=True, backend=rec)(x)
        torch.testing.assert_close(out, m(x), rtol=1e-5, atol=1e-5)
    assert rec.calls(CHUNKED_OP) == 1


def _op_inputs(e1, e3, pos, window, hq=3, wq=2, hk=2, wk=3, n=2, h=2, d=3):
    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    q = leaf(n, h, hq * wq, d) if e1 else None
    k = leaf(n, h, hk * wk, d) if e1 else None
    c = leaf(n, h, hk * wk) if e3 else None
    bx = leaf(n, h, hq * wq, wk) if pos else None
    by = leaf(n, h, hq * wq, hk) if pos else None
    win_x = torch.tensor([[True, True, False], [False, True, True]]) if window else None
    win_y = torch.tensor([[True, False], [True, True], [False, True]]) if window else None
    return [leaf(n, h, hk * wk, d), q, k, c, bx, by, win_x, win_y, hq, wq, hk, wk, 4 * hk * wk]


@pytest.mark.parametrize("e1, e3, pos, window", [
    (True, True, True, True), (True, False, False, False), (False, True, False, True), (False, False, True, False),
])
def test_opcheck_chunked_ops(e1, e3, pos, window):
    """Schema, autograd registration, fake (meta) implementation and AOT dispatch of both custom ops."""
    torch.manual_seed(0)
    args = _op_inputs(e1, e3, pos, window)
    torch.library.opcheck(CHUNKED_OP, args)
    value, q, k, c, bx, by = args[:6]
    with torch.no_grad():
        out = CHUNKED_OP(*args)
    for needs in ([True] * 6, [False, False, True, False, False, True]):
        needs = [need and x is not None for need, x in zip(needs, (q, k, value, c, bx, by))]
        detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(torch.ops.genattn.chunked_attention_backward.default,
                              [torch.randn_like(out), out, *detached, needs])


def test_chunked_op_gradients_match_autograd_function_semantics():
    """Through the op, the inputs' gradients are those of the materialising path (float64), and gradients
    nobody asked for are not computed (None)."""
    torch.manual_seed(0)
    args = _op_inputs(True, True, True, True)
    value, q, k, c, bx, by, win_x, win_y, hq, wq, hk, wk, _ = args
    t = Terms(value=value, hq=hq, wq=wq, hk=hk, wk=wk, query=q, key=k, key_bias=c,
              bias_x=bx.view(2, 2, hq, wq, wk), bias_y=by.view(2, 2, hq, wq, hk), window_x=win_x, window_y=win_y)
    from genattn.attention.paths.materialize import materialize_attention

    out, ref = chunked.chunked_attention(t, elements=4 * hk * wk), materialize_attention(t)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad_out = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [value, q, k, c, bx, by], grad_out, retain_graph=True),
                    torch.autograd.grad(ref, [value, q, k, c, bx, by], grad_out, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    only_value = torch.autograd.grad(out, [value], grad_out)
    assert only_value[0].shape == value.shape


SIZES = ((5, 7), (6, 9), (9, 4), (7, 6))


def _graphs_per_size(m, compiled, rec, training: bool) -> list[int]:
    """Run ``compiled`` on maps of every size in SIZES (float64), check it against eager, and return the number
    of graphs compiled so far after each size."""
    tol = dict(rtol=1e-10, atol=1e-12)
    counts = []
    for size in SIZES:
        x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=training)
        with torch.set_grad_enabled(training):
            out, ref = compiled(x), m(x)
        torch.testing.assert_close(out, ref, **tol)
        if training:
            g_out = torch.randn_like(ref)
            torch.testing.assert_close(torch.autograd.grad(out, x, g_out)[0],
                                       torch.autograd.grad(ref, x, g_out)[0], **tol)
        counts.append(len(rec.graphs))
    return counts


@pytest.mark.slow
def test_dynamic_shapes_inductor_inference():
    """Inductor, the chunked path: the first size compiles static, the second recompiles with dynamic sizes,
    later sizes reuse that graph; every result equals eager (float64)."""
    m = _module("1111", 1, "chunked", torch.float64)
    rec = Recorder("inductor")
    counts = _graphs_per_size(m, torch.compile(m, backend=rec), rec, training=False)
    assert counts == [1, 2, 2, 2]
    assert rec.calls(CHUNKED_OP) == 2


def test_dynamic_shapes_training():
    """The same in training (AOT autograd's joint graph with the custom op's backward, symbolic sizes)."""
    m = _module("1111", 1, "chunked", torch.float64)
    rec = Recorder()
    counts = _graphs_per_size(m, torch.compile(m, backend=rec), rec, training=True)
    assert counts == [1, 2, 2, 2]


def test_compiled_auto_skips_paths_dropped_by_eager_calls(monkeypatch):
    """Off the CPU 'auto' has fallbacks; a compiled graph cannot try them, so it holds the first candidate that
    eager calls have not dropped (simulated here on a CPU: sdpa first, dropped)."""
    from genattn.attention import paths
    from genattn.attention.paths import guard

    monkeypatch.setattr(paths, "candidates", lambda *args: ["sdpa", "chunked"])
    m = _module("1111", -1, "auto", torch.float64)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        key = guard.config_key(m.decompose(x))
    guard.reset()
    try:
        guard._failed[key] = {"sdpa": "dropped by this test"}
        rec = Recorder()
        with torch.no_grad():
            out = torch.compile(m, fullgraph=True, backend=rec)(x)
            torch.testing.assert_close(out, oracle_forward(m, x), rtol=1e-9, atol=1e-9)
    finally:
        guard.reset()
    assert rec.calls(CHUNKED_OP) == 1
