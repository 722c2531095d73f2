"""Training recipes: MMDetection's 1x schedule as a frozen dataclass.

A :class:`Recipe` is a :class:`~genattn.models.ModelConfig` (what to build: backbone, heads, image size) plus
how to train it: schedule, optimiser, loading, precision, seed and logging. Variants are made with
:meth:`Recipe.replace`, which merges changes key by key and accepts ``"key.sub=value"`` strings from a command
line (``backbone.attention_cfg.impl=chunked`` changes that one setting and keeps the rest); an unknown key is an
error that lists the valid ones. The resolved recipe is saved as ``recipe.json`` in every run directory and
inside every checkpoint.

Schedules: by default a run lasts ``epochs`` epochs and the learning rate drops by ``lr_gamma`` at the start of
each epoch listed in ``lr_steps`` (0-based epoch counter, as MMDetection's step policy: with steps (8, 11) epochs
1-8 use the full rate, 9-11 a tenth, 12 a hundredth). For tiny runs ``max_iters`` caps the total number of
iterations: the run stops there (mid-epoch if need be) with a checkpoint and an evaluation; together with
``lr_steps_unit='iter'`` the steps are then counted in iterations instead of epochs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from genattn import settings
from genattn.models.config import ModelConfig, legacy_model_config
from genattn.models.weights import atomic_write_text

__all__ = ["Recipe", "get_recipe", "tiny_recipe", "TINY_BACKBONE"]

#: Backbone changes for a model small enough to train on a CPU in seconds (tests, demos): one bottleneck per
#: stage, width 16, nothing frozen, BatchNorm statistics trained.
TINY_BACKBONE = {"layers": (1, 1, 1, 1), "base_width": 16, "stem_width": 16, "frozen_stages": -1,
                 "norm_eval": False}

_AMP = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class Recipe(ModelConfig):
    """A training recipe: a model configuration plus MMDetection's 1x schedule for it (the defaults).

    Attributes:
        backbone, heads, min_size, max_size: the model (see :class:`~genattn.models.ModelConfig`); build a
            recipe for a named model with :func:`get_recipe` or ``Recipe.from_name(name)``.
        pretrained_backbone: ImageNet weights for the backbone: a torchvision ResNet state-dict file or URL, or
            'torchvision' for torchvision's ResNet of the model's depth (the published models start from it;
            :func:`get_recipe` sets it); None (the dataclass default) trains from scratch.
        imgs_per_gpu: images per batch on each process.
        base_lr, base_batch_size: learning rate for ``base_batch_size`` images; scaled linearly with the
            total batch (``imgs_per_gpu * world_size``), see :meth:`lr`.
        momentum, weight_decay: SGD settings (weight decay on all parameters).
        grad_clip_norm: clip the gradients' global L2 norm to this (MMDetection's ``grad_clip=dict(max_norm=...)``);
            None (the 1x recipe) does not clip.
        warmup_iters, warmup_ratio: linear warmup from ``warmup_ratio * lr`` over the first iterations.
        epochs, lr_steps, lr_gamma, lr_steps_unit: the step schedule ('epoch' or 'iter' for ``lr_steps``).
        max_iters: optional cap on the total number of iterations.
        flip_prob: probability of a horizontal flip of a training image.
        workers: data-loading processes per training process.
        amp: 'none' (fp32), 'bf16' (autocast) or 'fp16' (autocast with a gradient scaler).
        seed: seed of model initialisation, data order, flips and sampling.
        eval_interval: evaluate every this many epochs (and at the end); 0 only at the end; -1 never.
        checkpoint_interval: save a checkpoint every this many epochs (the last one is always saved).
        checkpoint_interval_iters: also save a mid-epoch checkpoint ``iter_N.pth`` every this many iterations
            (N counted over the whole run); 0 (the default, as MMDetection) saves at epoch ends only.
        checkpoint_interval_minutes: also save a mid-epoch checkpoint when this many minutes have passed since
            the last checkpoint (or the start), for slots of known length; 0 is off.
        keep_iter_checkpoints: how many of the newest ``iter_N.pth`` files to keep (older ones are deleted when
            a new one is written; -1 keeps all). Epoch checkpoints are never deleted.
        log_interval: iterations between log lines.
        max_bad_samples: unreadable training images tolerated (skipped and counted) before the run stops;
            0 stops at the first.
        nonfinite_loss: 'raise' stops with an error naming the iteration; 'skip' skips the update and counts.
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` package).
        train_split, val_split: COCO layout names under a data root (``annotations/instances_{split}.json``
            and the image folder ``{split}``).
        device: 'auto' (CUDA if available), 'cpu' or 'cuda'.
        find_unused_parameters: passed to DistributedDataParallel.
    """

    pretrained_backbone: str | None = None
    imgs_per_gpu: int = 2
    base_lr: float = 0.02
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip_norm: float | None = None
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    epochs: int = 12
    lr_steps: tuple[int, ...] = (8, 11)
    lr_gamma: float = 0.1
    lr_steps_unit: str = "epoch"
    max_iters: int | None = None
    flip_prob: float = 0.5
    workers: int = 2
    amp: str = "none"
    seed: int = 0
    eval_interval: int = 1
    checkpoint_interval: int = 1
    checkpoint_interval_iters: int = 0
    checkpoint_interval_minutes: float = 0.0
    keep_iter_checkpoints: int = 1
    log_interval: int = 50
    max_bad_samples: int = 100
    nonfinite_loss: str = "raise"
    tensorboard: bool = False
    train_split: str = "train2017"
    val_split: str = "val2017"
    device: str = "auto"
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.amp in _AMP, f"amp must be one of {_AMP}, got {self.amp!r}"),
            (self.nonfinite_loss in ("raise", "skip"), f"nonfinite_loss must be 'raise' or 'skip', got "
                                                       f"{self.nonfinite_loss!r}"),
            (self.lr_steps_unit in ("epoch", "iter"), f"lr_steps_unit must be 'epoch' or 'iter', got "
                                                      f"{self.lr_steps_unit!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}"),
            (self.imgs_per_gpu >= 1, f"imgs_per_gpu must be >= 1, got {self.imgs_per_gpu}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_iters is None or self.max_iters >= 1, f"max_iters must be >= 1, got {self.max_iters}"),
            (self.base_lr > 0 and self.base_batch_size >= 1, "base_lr must be > 0 and base_batch_size >= 1"),
            (0 < self.warmup_ratio <= 1 and self.warmup_iters >= 0, "warmup_ratio must be in (0, 1] and "
                                                                    "warmup_iters >= 0"),
            (self.workers >= 0 and self.log_interval >= 1 and self.checkpoint_interval >= 1,
             "workers must be >= 0, log_interval and checkpoint_interval >= 1"),
            (self.checkpoint_interval_iters >= 0 and self.checkpoint_interval_minutes >= 0,
             "checkpoint_interval_iters and checkpoint_interval_minutes must be >= 0 (0 is off)"),
            (self.keep_iter_checkpoints >= 1 or self.keep_iter_checkpoints == -1,
             f"keep_iter_checkpoints must be >= 1 or -1 (keep all), got {self.keep_iter_checkpoints}"),
            (self.grad_clip_norm is None or self.grad_clip_norm > 0, "grad_clip_norm must be > 0 or None"),
            (0 <= self.flip_prob <= 1, f"flip_prob must be in [0, 1], got {self.flip_prob}"),
            (self.max_bad_samples >= 0, f"max_bad_samples must be >= 0, got {self.max_bad_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"recipe: {message}")

    def lr(self, total_batch_size: int) -> float:
        """Learning rate for a total batch (linear scaling rule): ``base_lr * total / base_batch_size``."""
        return self.base_lr * total_batch_size / self.base_batch_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "recipe") -> "Recipe":
        """Inverse of :meth:`to_dict` (recipes of genattn 0.1, with a model name and ``model_kwargs``, are read
        too); unknown keys are an error."""
        if isinstance(data, Mapping) and "model_kwargs" in data:
            model_keys = ("model", "backbone", "model_kwargs", "min_size", "max_size")
            config = legacy_model_config(data, where)
            rest = {k: v for k, v in data.items() if k not in model_keys}
            data = {**settings.to_dict(config), **rest}
        return super().from_dict(data, where)

    def save(self, path: str | os.PathLike) -> None:
        """Write the recipe as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        """Read a recipe written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"recipe file {path}: not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe file {path}: malformed JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, f"recipe file {path}")

    def replace(self, *overrides: str, **changes: Any) -> "Recipe":
        """A copy with some settings changed, merged key by key.

        Args:
            *overrides: command-line style ``"key=value"`` strings; the value is parsed as JSON when it can be
                (``epochs=2``, ``lr_steps=[1,2]``, ``amp=bf16``, ``max_iters=null``);
                ``backbone.attention_cfg.impl=chunked`` changes one nested setting.
            **changes: fields and values; a mapping given for a nested record (``backbone={'layers': ...}``)
                updates it key by key.

        Raises:
            ValueError: an unknown key (the valid ones listed), a wrong type or a bad value.
        """
        merged = settings.merge(settings.parse_assignments(overrides, "recipe override"), changes)
        return settings.update(self, merged, "recipe") if merged else self


def get_recipe(model: str, *overrides: str, **changes: Any) -> Recipe:
    """The 1x recipe for ``model`` as MMDetection trains it, starting from torchvision's ImageNet ResNet
    (``pretrained_backbone='torchvision'``, downloaded once), with optional changes (see
    :meth:`Recipe.replace`; ``pretrained_backbone=null`` trains from scratch)."""
    return Recipe.from_name(model, pretrained_backbone="torchvision").replace(*overrides, **changes)


def tiny_recipe(model: str, *overrides: str, **changes: Any) -> Recipe:
    """A CPU-sized variant of the 1x recipe: :data:`TINY_BACKBONE`, 128-224 pixel images, short warmup, frequent
    logs. Meant for smoke runs, demos and tests, not for accuracy."""
    tiny = Recipe.from_name(model, min_size=128, max_size=224, warmup_iters=20, workers=0, log_interval=10)
    return tiny.replace(backbone=TINY_BACKBONE).replace(*overrides, **changes)
