import pytest
import torch

from genattn.engine.schedule import WarmupMultiStepLR, lr_factor


def test_warmup_then_steps_by_epoch():
    kw = dict(steps=(8, 11), gamma=0.1, warmup_iters=500, warmup_ratio=0.001)
    assert lr_factor(0, 0, **kw) == pytest.approx(0.001)
    assert lr_factor(250, 0, **kw) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(500, 0, **kw) == 1.0
    assert [lr_factor(10_000, e, **kw) for e in (7, 8, 10, 11)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(5, 9, steps=(3, 6), gamma=0.1, warmup_iters=0, warmup_ratio=1, steps_unit="iter") == \
        pytest.approx(0.1)


def test_scheduler_sets_every_group_and_keeps_its_position():
    p = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": p[:1]}, {"params": p[1:], "lr": 0.5}], lr=0.02)
    sched = WarmupMultiStepLR(opt, steps=(1,), warmup_iters=10, warmup_ratio=0.1)
    assert sched.step(0, 0) == pytest.approx(0.002)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05)
    sched.step(20, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002, 0.05])
    other = WarmupMultiStepLR(opt, steps=(1,))
    other.load_state_dict(sched.state_dict())
    assert (other.last_iter, other.last_epoch) == (20, 1)
