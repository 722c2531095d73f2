"""Inference speed and peak training memory of a detector, measured the way the seed's table reports them.

* **Inference time (fps)**: batch 1, a few untimed warm-up images, then the median wall time over N images of
  the whole ``model(images)`` call (resize, normalisation, backbone, heads, post-processing), synchronising
  CUDA around each call; fps = 1 / median.
* **Peak training memory (GB)**: a few SGD steps (momentum, so the optimizer state counts) on random images
  with random boxes. On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, like
  MMDetection's logs, less what was allocated before the model was built (a model timed just before, say). On CPU no allocator statistics exist, so a fresh subprocess runs the steps and reports
  its peak resident set (``VmHWM`` in ``/proc/self/status``) minus its resident set after importing torch and
  genattn (before the model is built): the model, its gradients, the optimizer state and the activations,
  plus allocator slack. CPU and CUDA figures are therefore comparable between models but not to each other.

The device is always named in the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from genattn.engine.evaluate import autocast
from genattn.models import Classes, ModelConfig, load_model

__all__ = ["BenchResult", "benchmark", "bench_result", "inference_speed", "interleaved_speed", "training_memory",
           "training_step_time", "format_result", "device_name", "status_kib", "cuda_peak_bytes"]


@dataclass(frozen=True)
class BenchResult:
    """One model's benchmark (:func:`benchmark`); :meth:`to_dict` gives its JSON form.

    ``backbone`` is the backbone's label ('R-50'); ``impl`` the attention path the model computed with ('auto',
    'materialize' for the original algorithm, ...; None without attention). ``compiled``: timed through
    ``torch.compile``; ``first_call_s``: the first (untimed warm-up) call, which includes a compiled model's
    compilation.
    """

    model: str
    backbone: str
    impl: str | None
    device: str
    device_name: str
    threads: int
    num_images: int
    warmup: int
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    median_ms: float
    fps: float
    mem_gb: float | None
    mem_method: str | None
    torch: str
    amp: str = "none"
    compiled: bool = False
    first_call_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device}")
    return device


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, e.g. 'NVIDIA H100' or 'CPU x86_64, 2 threads'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {cpu} ({os.cpu_count()} cores), {threads} thread{'s' if threads != 1 else ''}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def inference_speed(model: torch.nn.Module, images: Sequence[torch.Tensor], *, warmup: int = 3,
                    progress: bool = False, amp: str = "none") -> dict[str, Any]:
    """Median batch-1 inference time of ``model`` over ``images``.

    Args:
        model: a detector following genattn's call convention (``model([image])`` in eval mode).
        images: the timed images, each [3, H, W] uint8 or float in [0, 1], already on the model's device. The first
            ``warmup`` calls reuse them untimed.
        warmup: untimed calls before timing (allocator, cuDNN autotuning, lazy initialisation).
        progress: show a progress bar.
        amp: 'none', 'bf16' or 'fp16': the calls run under autocast.

    Returns:
        ``{'median_s', 'fps', 'times_s', 'warmup_s'}`` (``warmup_s``: the untimed calls' times; the first one
        includes a ``torch.compile``'d model's compilation).
    """
    if not images:
        raise ValueError("inference_speed needs at least one image")
    device = images[0].device
    model.eval()
    warmup_times = []
    for i in range(max(warmup, 0)):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, amp):
            model([images[i % len(images)]])
        _sync(device)
        warmup_times.append(time.perf_counter() - start)
    times = []
    for image in tqdm(images, desc="bench", unit="img", disable=not progress, dynamic_ncols=True, leave=False):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, amp):
            model([image])
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": median, "fps": 1.0 / median, "times_s": times, "warmup_s": warmup_times}


@torch.inference_mode()
def interleaved_speed(models: Sequence[torch.nn.Module], images: Sequence[torch.Tensor], *, warmup: int = 1
                      ) -> list[dict[str, Any]]:
    """:func:`inference_speed` of several models timed in turn: image ``i`` goes through every model before
    image ``i + 1`` does, so that a machine whose speed drifts over minutes (a shared or throttled CPU) slows
    every model alike instead of whichever happens to be timed last. ``warmup`` untimed calls per model first.
    """
    if not images:
        raise ValueError("interleaved_speed needs at least one image")
    device = images[0].device
    for model in models:
        model.eval()
        for i in range(max(warmup, 0)):
            model([images[i % len(images)]])
    times: list[list[float]] = [[] for _ in models]
    for image in images:
        for model, model_times in zip(models, times):
            _sync(device)
            start = time.perf_counter()
            model([image])
            _sync(device)
            model_times.append(time.perf_counter() - start)
    return [{"median_s": statistics.median(t), "fps": 1.0 / statistics.median(t), "times_s": t} for t in times]


def _random_batch(batch_size: int, input_size: tuple[int, int], category_ids: Sequence[int],
                  generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    h, w = input_size
    images, targets = [], []
    for _ in range(batch_size):
        # uint8, as decoded images are: the timing includes the exact (integer) resize
        images.append(torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8))
        xy = torch.rand(3, 2, generator=generator) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(3, 2, generator=generator) * 0.3 + 0.1) * torch.tensor([w, h])
        labels = torch.tensor(category_ids)[torch.randint(len(category_ids), (3,), generator=generator)]
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return images, targets


def _train_steps(model: torch.nn.Module, device: torch.device, *, steps: int, batch_size: int,
                 input_size: tuple[int, int], amp: str = "none") -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images, targets = _random_batch(batch_size, input_size, list(model.category_ids), gen)
        images = [i.to(device) for i in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with autocast(device, amp):  # fp16 without a gradient scaler: the memory is the same
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def training_step_time(config: ModelConfig, classes: Classes | None = None, *, steps: int = 4, warmup: int = 1,
                       batch_size: int = 2, input_size: tuple[int, int] = (480, 640),
                       device: str | torch.device | None = None) -> float:
    """Median wall time of one SGD step (random images and boxes) of a freshly built model, in seconds.

    Used to size a run to a time budget (``genattn demo``); ``warmup`` untimed steps come first.
    """
    dev = _device(device)
    torch.manual_seed(0)
    model = config.build(classes).to(dev)
    _train_steps(model, dev, steps=warmup, batch_size=batch_size, input_size=input_size)
    times = []
    for _ in range(steps):
        _sync(dev)
        start = time.perf_counter()
        _train_steps(model, dev, steps=1, batch_size=batch_size, input_size=input_size)
        _sync(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS`` or ``VmHWM`` (peak RSS) on Linux."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak CUDA memory that ``fn()`` allocates, in bytes: the allocator's peak since a reset made just before
    ``fn`` runs, less what was already allocated then (so other live tensors do not count)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def training_memory(config: ModelConfig, classes: Classes | None = None, *, device: str | torch.device | None = None,
                    steps: int = 3, batch_size: int = 2, input_size: tuple[int, int] = (480, 640),
                    threads: int | None = None, amp: str = "none") -> dict[str, Any]:
    """Peak memory of a few training steps of a freshly built model (see the module docstring for how).

    Args:
        config: the model (rebuilt here; weights do not change the memory).
        classes: its classes (default COCO's 80).
        device: cpu or cuda (default: cuda if available).
        steps: SGD steps (>= 1).
        batch_size: images per step.
        input_size: (H, W) of the random images before the model's resize.
        threads: CPU threads of the measuring process.
        amp: 'none', 'bf16' or 'fp16': the forward passes run under autocast.

    Returns:
        ``{'mem_gb', 'mem_method'}``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = _device(device)
    if device.type == "cuda":
        # The model is built inside the measurement: MMDetection's figures count its parameters too.
        def steps_of_a_new_model():
            model = config.build(classes).to(device)
            _train_steps(model, device, steps=steps, batch_size=batch_size, input_size=input_size, amp=amp)

        peak = cuda_peak_bytes(steps_of_a_new_model, device)
        return {"mem_gb": peak / 2**30,
                "mem_method": "torch.cuda.max_memory_allocated, model included, other tensors excluded"}
    if not Path("/proc/self/status").exists():
        return {"mem_gb": float("nan"), "mem_method": "unavailable (needs /proc/self/status)"}
    job = {"config": config.to_dict(), "classes": (classes or Classes.coco()).to_dict(), "steps": steps, "batch_size": batch_size, "input_size": list(input_size),
           "threads": threads or torch.get_num_threads(), "amp": amp}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # so the worker imports this very genattn
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "genattn.app.bench", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory-measuring subprocess failed: {last}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"mem_gb": result["peak_kib"] / 2**20,
            "mem_method": "peak RSS of a subprocess (VmHWM) minus its RSS before building the model"}


def _memory_worker(job: dict) -> None:
    torch.set_num_threads(int(job["threads"]))
    config, classes = ModelConfig.from_dict(job["config"]), Classes.from_dict(job["classes"])
    base = status_kib("VmRSS")
    model = config.build(classes)
    _train_steps(model, torch.device("cpu"), steps=job["steps"], batch_size=job["batch_size"],
                 input_size=tuple(job["input_size"]), amp=job.get("amp", "none"))
    print(json.dumps({"peak_kib": status_kib("VmHWM") - base}))


def benchmark(model: str | ModelConfig | torch.nn.Module, *, config: ModelConfig | None = None,
              checkpoint: str | None = None, changes: Mapping[str, Any] | Sequence[str] = (),
              impl: str | None = None, device: str | torch.device | None = None, num_images: int = 20, warmup: int = 3,
              input_size: tuple[int, int] = (480, 640), images: Sequence[torch.Tensor] | None = None,
              memory_steps: int = 3, batch_size: int = 2, threads: int | None = None,
              progress: bool = False, amp: str = "none", compile: bool = False) -> BenchResult:
    """Inference speed and training memory of one model.

    Args:
        model: a model name or configuration (built here, with ``checkpoint`` and ``changes``), or an already
            built detector (then ``config`` says what it is, for the memory measurement and the report).
        config: the built detector's configuration.
        checkpoint: weights to load for the speed test (trained weights change how many boxes reach the
            heads' post-processing, so use them where you have them).
        changes: changes to the model's settings.
        impl: the attention path of every attention block (see ``ModelConfig.with_impl``).
        device: cpu or cuda (default: cuda if available).
        num_images: timed images.
        warmup: untimed warm-up calls.
        input_size: (H, W) of the random images used when ``images`` is not given.
        images: real images ([3, H, W] uint8, or float in [0, 1]) to time instead of random ones; cycled to
            ``num_images``.
        memory_steps: training steps for the memory peak (0 skips it).
        batch_size: images per training step.
        threads: CPU threads (default: torch's current setting).
        progress: show a progress bar while timing.
        amp: 'none', 'bf16' or 'fp16': both measurements under autocast.
        compile: time ``torch.compile(model)`` (default backend, inductor); the first warm-up call compiles and
            is reported as ``first_call_s`` (needs ``warmup >= 1``). The memory is eager training's.
    """
    if compile and warmup < 1:
        raise ValueError("benchmark: compile needs warmup >= 1 (the first call compiles and must not be timed)")
    dev = _device(device)
    autocast(dev, amp)  # an amp the device cannot run is an error before anything is built
    if threads:
        torch.set_num_threads(threads)
    if isinstance(model, torch.nn.Module):
        if config is None:
            raise ValueError("benchmark: give the config of a built model")
        net = model
    else:
        net, config = load_model(model, checkpoint, changes=changes, impl=impl)
    net = net.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    if images:
        timed = [images[i % len(images)].to(dev) for i in range(num_images)]
    else:
        # uint8, as decoded images are: the timing includes the exact (integer) resize
        timed = [torch.randint(0, 256, (3, *input_size), generator=gen, dtype=torch.uint8).to(dev)
                 for _ in range(min(num_images, 4))]
        timed = [timed[i % len(timed)] for i in range(num_images)]
    speed = inference_speed(torch.compile(net) if compile else net, timed, warmup=warmup, progress=progress,
                            amp=amp)
    memory: dict[str, Any] = {"mem_gb": None, "mem_method": None}
    if memory_steps > 0:
        mem_size = tuple(timed[0].shape[-2:]) if images else input_size
        memory = training_memory(config, Classes(net.category_ids, net.class_names), device=dev, steps=memory_steps,
                                 batch_size=batch_size, input_size=mem_size, threads=threads, amp=amp)
    return bench_result(config, dev, speed, memory, warmup=warmup, input_size=tuple(timed[0].shape[-2:]), amp=amp,
                        compiled=compile)


def bench_result(config: ModelConfig, device: torch.device, speed: Mapping[str, Any], memory: Mapping[str, Any], *,
                 warmup: int, input_size: tuple[int, int], amp: str = "none", compiled: bool = False) -> BenchResult:
    """The :class:`BenchResult` of ``config`` from a speed measurement (:func:`inference_speed`) and a memory one
    (:func:`training_memory`, or ``{'mem_gb': None, 'mem_method': None}``)."""
    attention = config.backbone.attention_cfg if config.attention_type else None
    return BenchResult(model=config.name, backbone=config.backbone.label,
                       impl=attention.impl if attention is not None else None, device=str(device),
                       device_name=device_name(device), threads=torch.get_num_threads(),
                       num_images=len(speed["times_s"]), warmup=warmup, input_size=tuple(input_size),
                       image_size=(config.min_size, config.max_size), median_ms=speed["median_s"] * 1e3,
                       fps=speed["fps"], torch=torch.__version__, amp=amp, mem_gb=memory["mem_gb"],
                       mem_method=memory["mem_method"], compiled=compiled,
                       first_call_s=speed["warmup_s"][0] if speed.get("warmup_s") else None)


def format_result(result: BenchResult) -> str:
    """A few human-readable lines for one :func:`benchmark` result."""
    lines = [f"model:     {result.model}" + (f" (attention path {result.impl})" if result.impl else ""),
             f"device:    {result.device} ({result.device_name})",
             f"inference: {result.fps:.2f} fps (median {result.median_ms:.1f} ms over {result.num_images}"
             f" images of {result.input_size[0]}x{result.input_size[1]}, batch 1, {result.warmup} warm-up"
             + (f", autocast {result.amp}" if result.amp != "none" else "")
             + (f", torch.compile: first call {result.first_call_s:.1f} s" if result.compiled else "") + ")"]
    if result.mem_gb is not None:
        lines.append(f"memory:    {result.mem_gb:.3f} GB peak in training ({result.mem_method})")
    return "\n".join(lines)


if __name__ == "__main__":  # the CPU memory worker: python -m genattn.app.bench JOB_JSON
    _memory_worker(json.loads(sys.argv[1]))
