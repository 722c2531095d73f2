"""The device rules of training, testing and benchmarking, each checked where a CPU can check it.

No GPU runs here: where a rule is about CUDA, torch.cuda's functions are replaced by stand-ins that record what
the code asks of them.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tiny_setup import ToyDetector, make_coco, tiny_recipe
from genattn.app import bench
from genattn.data import CocoDetection
from genattn.engine import checkpoint, distributed, logger
from genattn.engine import train as train_module
from genattn.engine.evaluate import evaluate
from genattn.engine.train import train
from genattn.models import weights


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs; returns the list of calls made."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    return calls


def test_one_gpu_per_process_chosen_before_the_nccl_group(monkeypatch, two_gpus):
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: two_gpus.append(("init", backend)))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_distributed("cuda") == (torch.device("cuda", 1), False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    for var, value in (("RANK", "3"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(var, value)
    two_gpus.clear()
    assert distributed.init_distributed("cuda") == (torch.device("cuda", 1), True)
    assert two_gpus == [("set_device", 1), ("init", "nccl")]  # the GPU first, then NCCL
    two_gpus.clear()
    assert distributed.init_distributed("cpu") == (torch.device("cpu"), True)
    assert two_gpus == [("init", "gloo")]
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match=r"^LOCAL_RANK 2 but this machine has 2 GPU\(s\): NCCL needs one GPU per "
                                         r"process, so start at most 2 process\(es\) per machine"):
        distributed.init_distributed("cuda")


@pytest.mark.parametrize("backend, expected", [("nccl", {"device_ids": [1]}), ("gloo", {})])
def test_barrier_names_the_process_gpu_under_nccl(monkeypatch, two_gpus, backend, expected):
    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    monkeypatch.setattr(dist, "barrier", lambda **kw: seen.append(kw))
    distributed.barrier()
    assert seen == [expected]


def test_checkpoints_keep_the_cuda_rng_of_the_process_gpu_only(monkeypatch, two_gpus):
    restored = []
    mine, other = torch.tensor([1], dtype=torch.uint8), torch.tensor([0], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: mine)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: restored.append(s))
    state = checkpoint.rng_state()
    assert state["cuda"] is mine  # a resuming machine may see fewer GPUs: no other GPU's state is saved
    checkpoint.set_rng_state(state)
    checkpoint.set_rng_state(dict(state, cuda=[other, mine]))  # older files: every GPU's; this process has GPU 1
    checkpoint.set_rng_state(dict(state, cuda=[other]))  # saved with fewer GPUs than GPU 1: nothing to restore
    assert restored == [mine, mine]


class FakeAllocator:
    """torch.cuda's memory statistics for a device that already holds ``resident`` bytes and an old peak."""

    def __init__(self, monkeypatch, resident: int, old_peak: int):
        self.allocated, self.peak = resident, old_peak
        for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def synchronize(self, device=None):
        pass

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def alloc(self, size: int):
        self.allocated += size
        self.peak = max(self.peak, self.allocated)


def test_cuda_peak_counts_what_the_step_allocates_after_a_reset(monkeypatch):
    fake = FakeAllocator(monkeypatch, resident=1000, old_peak=9000)  # e.g. a model timed just before

    def step():
        fake.alloc(500)  # model and activations
        fake.alloc(-200)  # activations freed
        fake.alloc(50)

    assert bench.cuda_peak_bytes(step, torch.device("cuda")) == 500


def test_checkpoints_are_read_onto_the_cpu_with_weights_only(monkeypatch, tmp_path):
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, path)
    monkeypatch.setattr(torch, "load", spy)
    weights.load_file(path)
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True


class _Stop(Exception):
    pass


def test_batches_are_pinned_for_cuda_only(monkeypatch, tmp_path):
    root = tmp_path / "data"
    make_coco(root, "val2017", 2)
    dataset = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json", train=False)
    seen = []

    def loader(*args, **kwargs):
        seen.append(kwargs.get("pin_memory", False))
        raise _Stop  # nothing is copied to a GPU that is not there

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    for device in ("cuda", "cpu"):
        with pytest.raises(_Stop):
            evaluate(ToyDetector(), dataset, device=torch.device(device))
    with pytest.raises(_Stop):
        make_coco(root, "train2017", 2)
        train(tiny_recipe(epochs=1, eval_interval=-1), data_root=root, work_dir=tmp_path / "r", model=ToyDetector(),
              progress=False)
    assert seen == [True, False, False]


def test_fp16_gradients_are_unscaled_before_clipping(monkeypatch, tmp_path):
    """With fp16 the loss is scaled (by 65536 at first): clipping must see the true gradients."""
    root = tmp_path / "data"
    make_coco(root, "train2017", 2)
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        norms.append(torch.norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None])).item())
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    for amp in ("none", "fp16"):
        torch.manual_seed(0)
        train(tiny_recipe(epochs=1, eval_interval=-1, amp=amp, grad_clip_norm=1e3, max_iters=1), data_root=root,
              work_dir=tmp_path / amp, model=ToyDetector(), progress=False)
    assert len(norms) == 2 and norms[1] == pytest.approx(norms[0], rel=0.05)
    assert torch.backends.cudnn.benchmark is False  # left alone: detection inputs change size every batch


def test_each_training_run_logs_its_own_cuda_peak(monkeypatch, tmp_path):
    """log.json's memory is max_memory_allocated since the run started, not since an earlier run (genattn study
    trains several models in one process)."""
    fake = FakeAllocator(monkeypatch, resident=0, old_peak=9 * 2**20)  # an earlier run's peak: 9 MB
    cuda = torch.device("cuda")
    logger.reset_peak_memory(cuda)
    fake.alloc(2**20)
    assert logger.memory_mb(cuda) == 1
    seen = []
    monkeypatch.setattr(train_module, "reset_peak_memory", seen.append)
    root = tmp_path / "data"
    make_coco(root, "train2017", 2)
    train(tiny_recipe(epochs=1, eval_interval=-1, max_iters=1), data_root=root, work_dir=tmp_path / "r",
          model=ToyDetector(), progress=False)
    assert seen == [torch.device("cpu")]
