"""MMDetection's learning-rate policy: step decay plus a linear warmup over the first iterations.

Not a ``torch.optim.lr_scheduler`` subclass because the rate depends on both the iteration (warmup) and the
epoch (steps); the training loop calls :meth:`WarmupMultiStepLR.step` with both before every iteration.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["WarmupMultiStepLR", "lr_factor"]


def lr_factor(iteration: int, epoch: int, *, steps: Sequence[int], gamma: float, warmup_iters: int,
              warmup_ratio: float, steps_unit: str = "epoch") -> float:
    """Multiplier of the base learning rate for a (0-based) global iteration within a (0-based) epoch.

    Step decay: ``gamma ** #{s in steps : counter >= s}`` with ``counter`` the epoch (or iteration when
    ``steps_unit='iter'``). Warmup (MMDetection's 'linear'): during the first ``warmup_iters`` iterations the
    decayed rate is multiplied by ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``, i.e. it rises linearly
    from ``warmup_ratio`` of it.
    """
    counter = epoch if steps_unit == "epoch" else iteration
    factor = gamma ** sum(counter >= s for s in steps)
    if iteration < warmup_iters:
        factor *= 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
    return factor


class WarmupMultiStepLR:
    """Sets the learning rate of every parameter group from its base rate and :func:`lr_factor`.

    Args:
        optimizer: the optimizer; each group's current ``lr`` is taken as its base rate.
        steps, gamma, warmup_iters, warmup_ratio, steps_unit: see :func:`lr_factor`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, steps: Sequence[int], gamma: float = 0.1,
                 warmup_iters: int = 500, warmup_ratio: float = 0.001, steps_unit: str = "epoch") -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.kwargs = dict(steps=tuple(steps), gamma=gamma, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio,
                           steps_unit=steps_unit)
        self.last_iter, self.last_epoch = -1, 0

    def step(self, iteration: int, epoch: int) -> float:
        """Set the rates for ``iteration`` of ``epoch``; returns the first group's rate."""
        factor = lr_factor(iteration, epoch, **self.kwargs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.last_iter, self.last_epoch = iteration, epoch
        return self.base_lrs[0] * factor

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_iter": self.last_iter, "last_epoch": self.last_epoch,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.kwargs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; the schedule's shape keeps the current settings (the recipe may change it)."""
        self.last_iter, self.last_epoch = state["last_iter"], state["last_epoch"]
