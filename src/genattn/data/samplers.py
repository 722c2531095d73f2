"""Batch samplers: aspect-ratio grouped training batches and sharded evaluation, both distributed-aware.

Training batches are formed *globally* (``batch_size * num_replicas`` images from one aspect-ratio group) from
a permutation that depends only on (seed, epoch); each process then takes its slice. A run on N processes with
B images each therefore sees exactly the batches of a single-process run with N*B images, every process runs
the same number of steps (DDP needs that), and a resumed run can skip the batches it already did.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = ["GroupedBatchSampler", "ShardedSampler"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class GroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches whose images share an aspect-ratio group (MMDetection's GroupSampler idea).

    Each group's indices (in a seeded random order) are cut into global batches of ``batch_size *
    num_replicas``; a group whose size is not a multiple is topped up by repeating its own first indices, as
    MMDetection pads its groups. The global batches are then shuffled and each replica yields its
    ``batch_size`` slice of every one.

    Args:
        group_ids: group of each dataset index (e.g. ``CocoDetection.aspect_ratio_groups()``).
        batch_size: images per batch on one replica.
        num_replicas: number of processes; default: the distributed world size (1 without torch.distributed).
        rank: this process; default: the distributed rank.
        shuffle: shuffle indices and batches (False keeps the dataset order, useful for tests).
        seed: seed of the shuffle; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, group_ids: Sequence[int], batch_size: int, *, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0) -> None:
        world, this_rank = _world()
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = this_rank if rank is None else int(rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        if len(group_ids) == 0:
            raise ValueError("group_ids is empty: the dataset has no images")
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.epoch, self.start_batch = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_batch`` batches (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _global_batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.group_ids)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        size = self.global_batch_size
        batches = []
        for group in sorted(set(self.group_ids)):
            members = [i for i in order if self.group_ids[i] == group]
            padded = math.ceil(len(members) / size) * size
            members = [members[i % len(members)] for i in range(padded)]
            batches += [members[i:i + size] for i in range(0, padded, size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.batch_size
        for batch in self._global_batches()[self.start_batch:]:
            yield batch[lo:lo + self.batch_size]

    def __len__(self) -> int:
        """Batches per epoch (the same on every replica), not counting ``start_batch``."""
        size = self.global_batch_size
        counts: dict[int, int] = {}
        for g in self.group_ids:
            counts[g] = counts.get(g, 0) + 1
        return sum(math.ceil(c / size) for c in counts.values())


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Every ``num_replicas``-th index starting at ``rank``, in order, without padding (for evaluation:
    each image is evaluated exactly once over all processes)."""

    def __init__(self, length: int, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        world, this_rank = _world()
        self.length = int(length)
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = this_rank if rank is None else int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
