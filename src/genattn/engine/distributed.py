"""torch.distributed helpers: environment-based setup (``torchrun``) and small collectives.

Every helper also works without torch.distributed (one process), so the training code has a single path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process", "barrier",
           "all_gather_object", "broadcast_object", "all_reduce_mean", "local_rank"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun, else 0)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str = "auto") -> tuple[torch.device, bool]:
    """Join the process group described by torchrun's environment variables, if there is one.

    With ``WORLD_SIZE`` > 1 (and no group yet) this calls ``init_process_group`` with nccl on CUDA and gloo on
    CPU; otherwise it does nothing. On CUDA the process uses GPU ``LOCAL_RANK`` and makes it the current device
    before the group exists: NCCL needs one GPU per process, and collectives run on the current device.

    Args:
        device: 'auto' (CUDA if available), 'cpu' or 'cuda'.

    Returns:
        ``(device, created)``: the device to run on, and whether this call created the process group (the
        caller then destroys it when done).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device == "cuda":
        index, count = local_rank(), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"LOCAL_RANK {index} but this machine has {count} GPU(s): NCCL needs one GPU per "
                             f"process, so start at most {count} process(es) per machine (torchrun "
                             f"--nproc_per_node {count})")
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    created = False
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"WORLD_SIZE > 1 but {var} is not set: launch with torchrun")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
        created = True
    return dev, created


def barrier() -> None:
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":  # name this process's GPU rather than let NCCL guess it from the rank
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without distribution)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is left alone)."""
    values = values.detach().clone()
    if is_distributed():
        dist.all_reduce(values)
        values /= get_world_size()
    return values

