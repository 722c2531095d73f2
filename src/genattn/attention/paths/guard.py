"""Running ``'auto'`` on paths that no test has run on this device: fall back, verify, remember.

CI has no GPU, so on CUDA every path is untried. ``run_guarded`` runs the first of a list of candidate paths
(e.g. flex, sdpa, chunked) and, if it raises (no Triton, a compiler error, an unsupported size or dtype, in
the forward or the backward pass), warns once, computes the call with the next candidate and keeps using that
one for this *configuration* (device, dtype, which energy terms, window, head widths, gradients) for the rest
of the process. The first time a path meets a configuration at a new map size, its output (and, in training,
its input gradients) are also compared with the last candidate's: a path that silently returns wrong values
(as FlexAttention's CPU kernel did with dynamic shapes) is dropped the same way. Out-of-memory errors are
raised, not taken for a broken path. ``fallbacks()`` lists what was dropped, and why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import Tensor

from genattn.attention.terms import Terms

_DIFFERENTIABLE = ("value", "query", "key", "key_bias", "bias_x", "bias_y")
# Largest difference from the reference, relative to the reference's largest magnitude, that still counts as
# the same result: rounding of one kernel against another (TF32 matmuls included) is far below these.
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-2, torch.float16: 6e-2, torch.bfloat16: 6e-2}

_failed: dict[tuple, dict[str, str]] = {}  # configuration -> {path: why it was dropped}
_verified: set[tuple] = set()  # (configuration, path, sizes, 'forward' | 'backward')

Runner = Callable[[str, Terms], Tensor]


def fallbacks() -> dict[str, str]:
    """Every path dropped in this process: ``{'<path> for <configuration>': reason}``."""
    return {f"{name} for {describe(key)}": why for key, names in _failed.items() for name, why in names.items()}


def reset() -> None:
    """Forget every failure and verification (tests)."""
    _failed.clear()
    _verified.clear()


def _compute_dtype(t: Terms) -> torch.dtype:
    dev = t.value.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.value.dtype


def _needs_grad(t: Terms) -> bool:
    return torch.is_grad_enabled() and any(
        getattr(t, f) is not None and getattr(t, f).requires_grad for f in _DIFFERENTIABLE)


def config_key(t: Terms) -> tuple:
    """What a path's success depends on, apart from the map size."""
    d = t.query.shape[-1] if t.query is not None else 0
    return (str(t.value.device), str(_compute_dtype(t)).replace("torch.", ""), t.query is not None,
            t.key_bias is not None, t.bias_x is not None, t.window_x is not None, d, t.value.shape[-1],
            _needs_grad(t))


def describe(key: tuple) -> str:
    device, dtype, e1, e3, pos, window, d, dv, grad = key
    terms = "+".join(n for n, on in (("q.k", e1), ("key bias", e3), ("position", pos)) if on) or "no terms"
    return (f"{device} {dtype}, {terms}{', window' if window else ''}, head width {d or dv}, "
            f"{'training' if grad else 'inference'}")


def _drop(key: tuple, name: str, replacement: str, why: str) -> None:
    _failed.setdefault(key, {})[name] = why
    warnings.warn(f"genattn attention: path '{name}' {why} ({describe(key)}); using '{replacement}' for this "
                  f"configuration from now on", RuntimeWarning, stacklevel=4)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _mismatch(got: Tensor | None, want: Tensor | None) -> str | None:
    """Why ``got`` is not ``want`` (None when they agree within the dtype's tolerance)."""
    if want is None:  # nothing to compare with (a gradient the reference does not produce)
        return None
    if got is None:
        return "gives no gradient where the reference does"
    if got.shape != want.shape:
        return f"returned shape {tuple(got.shape)} instead of {tuple(want.shape)}"
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        return "returned non-finite values"
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    tolerance = max(_TOLERANCE.get(got.dtype, 6e-2), _TOLERANCE.get(want.dtype, 6e-2))  # the coarser dtype's
    if err > tolerance * max(scale, 1e-30):
        return f"differs from the reference by {err:.3g} (largest reference magnitude {scale:.3g})"
    return None


def _terms(t: Terms, tensors) -> Terms:
    """``t`` with its differentiable tensors replaced."""
    static = {f.name: getattr(t, f.name) for f in fields(t) if f.name not in _DIFFERENTIABLE}
    return Terms(**static, **dict(zip(_DIFFERENTIABLE, tensors)))


class _Rejected(Exception):
    """A path ran but its result differs from the reference's."""


@dataclass(frozen=True)
class _Attempt:
    """One guarded run: path ``names[0]``, with ``names[1:]`` the fallbacks (the last is the reference)."""

    names: tuple[str, ...]
    key: tuple
    sizes: tuple[int, ...]
    run: Runner

    def check(self, stage: str, got: list, reference: Callable[[], list | None]) -> None:
        """Compare a first result at these sizes with the reference's; raise _Rejected if they differ."""
        mark = (self.key, self.names[0], self.sizes, stage)
        if mark in _verified:
            return
        want = _unless_failing(reference, self.names[-1])
        if want is not None:
            why = next((w for w in map(_mismatch, got, want) if w), None)
            if why is not None:
                raise _Rejected(why if stage == "forward" else f"gradient {why}")
        _verified.add(mark)


def run_guarded(names: list[str], t: Terms, run: Runner) -> Tensor:
    """Attention of ``t`` through the first of ``names`` that works here (the last one is run unguarded)."""
    key = config_key(t)
    dropped = _failed.get(key, {})
    names = [n for n in names[:-1] if n not in dropped] + names[-1:]
    sizes = (t.batch, t.heads, t.hq, t.wq, t.hk, t.wk)
    for i in range(len(names) - 1):
        attempt = _Attempt(tuple(names[i:]), key, sizes, run)
        try:
            if key[-1]:  # training: the backward pass is guarded too
                return _Guarded.apply(attempt, t, *(getattr(t, f) for f in _DIFFERENTIABLE))
            return _forward(attempt, t)
        except torch.cuda.OutOfMemoryError:
            raise
        except _Rejected as err:
            _drop(key, names[i], names[i + 1], str(err))
        except Exception as err:  # noqa: BLE001 - any failure of an untried path means: use the next one
            _drop(key, names[i], names[i + 1], f"failed: {_first_line(err)}")
    return run(names[-1], t)


def _forward(attempt: _Attempt, t: Terms) -> Tensor:
    out = attempt.run(attempt.names[0], t)

    def reference():
        with torch.no_grad():
            return [attempt.run(attempt.names[-1], t)]

    attempt.check("forward", [out], reference)
    return out


def _unless_failing(fn: Callable[[], list | None], reference: str) -> list | None:
    """``fn()``, or None (nothing to verify against) if the reference path itself fails."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"genattn attention: the reference path '{reference}' failed ({_first_line(err)}); the "
                      f"other paths' results are not verified", RuntimeWarning, stacklevel=5)
        return None


class _Guarded(torch.autograd.Function):
    """A path's forward and backward; a failure or a wrong gradient in the backward pass is replaced by the
    next paths' gradients (a failure in the forward pass propagates to ``run_guarded``)."""

    @staticmethod
    def forward(ctx, attempt: _Attempt, t: Terms, *tensors):
        leaves = [None if x is None else x.detach().requires_grad_(x.requires_grad) for x in tensors]
        dev = t.value.device.type
        ctx.attempt, ctx.t = attempt, _terms(t, leaves)
        ctx.autocast = (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))
        with torch.enable_grad():
            ctx.out = _forward(attempt, ctx.t)
        return ctx.out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        attempt, t = ctx.attempt, ctx.t
        leaves = [getattr(t, f) for f in _DIFFERENTIABLE]
        wanted = [x for x in leaves if x is not None and x.requires_grad]

        def grads_of(path: str | None) -> list[Tensor | None]:
            out = ctx.out
            if path is not None:
                dev, dtype, enabled = ctx.autocast
                with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                    out = attempt.run(path, t)
            return list(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))

        try:
            grads = grads_of(None)
            attempt.check("backward", grads, lambda: grads_of(attempt.names[-1]))
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            why = str(err) if isinstance(err, _Rejected) else f"failed in the backward pass: {_first_line(err)}"
            _drop(attempt.key, attempt.names[0], attempt.names[1], why)
            grads = _fallback_grads(attempt, grads_of)
        it = iter(grads)
        return (None, None, *(next(it) if x is not None and x.requires_grad else None for x in leaves))


def _fallback_grads(attempt: _Attempt, grads_of) -> list[Tensor | None]:
    """The gradients of the first fallback path that computes them (the last one unguarded)."""
    for i, name in enumerate(attempt.names[1:-1], start=1):
        try:
            return grads_of(name)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            _drop(attempt.key, name, attempt.names[i + 1], f"failed in the backward pass: {_first_line(err)}")
    return grads_of(attempt.names[-1])


def dropped(t: Terms) -> dict[str, str]:
    """The paths dropped for ``t``'s configuration, with the reasons."""
    return dict(_failed.get(config_key(t), {}))
