"""Device rules of the attention paths that a CPU can check (the widths of sdpa's vectors: test_sdpa_widths)."""

from __future__ import annotations

import torch

from genattn.attention.paths.chunked import blocks
from genattn.attention.terms import Terms


def test_chunked_worker_threads_only_on_cpu():
    """Python worker threads share the CPU's cores between blocks; on a GPU the blocks run in one stream."""
    torch.set_num_threads(2)  # the autouse fixture restores the setting
    for device, workers in (("cpu", 2), ("meta", 1)):  # 'meta': any non-CPU device, shapes only
        value = torch.empty(2, 4, 30, 8, device=device)
        t = Terms(value=value, hq=5, wq=6, hk=5, wk=6)
        plan = blocks(t, elements=30 * 30)  # one (image, head) pair a block: 8 blocks
        assert len(plan) == workers, device
        assert sum(len(p) for p in plan) == 8
