"""Models ready for inference: from a name, a training recipe or a checkpoint file.

``detect``, ``attention``, ``bench`` and ``convert`` all need "this model, with these weights": a
:class:`ModelSpec` is a training :class:`~genattn.recipes.Recipe` (the model's name, backbone overrides and
image size) plus the classes it predicts, and :func:`load_model` builds one from whatever the user has:

* a checkpoint of ``genattn train`` (or of ``genattn convert``): its recipe and classes rebuild the model,
  then its weights load strictly;
* an MMDetection checkpoint file or a released model's URL: the named COCO model loads it through
  :func:`genattn.models.zoo.load_weights`;
* nothing: the named model with its initial weights.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from genattn.engine.checkpoint import atomic_torch_save
from genattn.recipes import Recipe

__all__ = ["ModelSpec", "load_model", "convert_checkpoint_file", "guess_model_name", "CONVERTED_FORMAT"]

CONVERTED_FORMAT = "genattn-checkpoint-v1"  # the training checkpoints' format, so both load the same way


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: a recipe's model settings plus the classes it predicts (None: COCO's 80)."""

    recipe: Recipe
    category_ids: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None

    @classmethod
    def create(cls, name: str, *, backbone: dict | None = None, image_size: tuple[int, int] | None = None,
               overrides: Sequence[str] = (), category_ids: Sequence[int] | None = None,
               class_names: Sequence[str] | None = None) -> "ModelSpec":
        """A spec from a model name and optional changes.

        Args:
            name: model name.
            backbone: ResNet overrides, merged into the recipe's.
            image_size: (min_size, max_size).
            overrides: recipe ``key=value`` strings (:meth:`genattn.recipes.Recipe.replace`), e.g.
                ``model_kwargs.fpn_channels=64``.
            category_ids, class_names: the classes (default COCO's 80).
        """
        recipe = Recipe(model=name).replace(*overrides)
        changes: dict[str, Any] = {}
        if backbone:
            changes["backbone"] = {**dict(recipe.backbone), **backbone}
        if image_size:
            changes["min_size"], changes["max_size"] = image_size
        return cls(recipe.replace(**changes), _tuple(category_ids), _tuple(class_names))

    @property
    def name(self) -> str:
        return self.recipe.model

    @property
    def min_size(self) -> int:
        return self.recipe.min_size

    @property
    def max_size(self) -> int:
        return self.recipe.max_size

    def replace(self, **changes: Any) -> "ModelSpec":
        """A copy with recipe fields (or ``category_ids``/``class_names``) changed."""
        own = {k: _tuple(changes.pop(k)) for k in ("category_ids", "class_names") if k in changes}
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, **changes), **own)

    def build(self) -> torch.nn.Module:
        """Build the model (initial weights) with ``genattn.models.get_model``.

        Raises:
            ValueError: the name is not a known model.
        """
        from genattn.models import get_model

        kwargs: dict[str, Any] = dict(self.recipe.model_kwargs)
        if self.category_ids is not None:
            kwargs.update(num_classes=len(self.category_ids), category_ids=self.category_ids,
                          class_names=self.class_names)
        try:
            return get_model(self.recipe.model, min_size=self.recipe.min_size, max_size=self.recipe.max_size,
                             backbone=dict(self.recipe.backbone) or None, **kwargs)
        except KeyError as e:  # a registry lookup; the user gave an unknown name
            raise ValueError(f"unknown model {self.recipe.model!r} ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "category_ids": _list(self.category_ids),
                "class_names": _list(self.class_names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(Recipe.from_dict(data["recipe"]), _tuple(data.get("category_ids")),
                   _tuple(data.get("class_names")))


def _tuple(value):
    return None if value is None else tuple(value)


def _list(value):
    return None if value is None else list(value)


def _read(path: str) -> dict[str, Any]:
    from genattn.models.convert import load_checkpoint_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_checkpoint_file(path)  # weights_only, one-line errors
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(state).__name__}")
    return state


def load_model(spec: ModelSpec | str, *, checkpoint: str | os.PathLike | None = None,
               image_size: tuple[int, int] | None = None,
               device: str | torch.device | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """Build a model in eval mode, with weights from ``checkpoint`` if given.

    Args:
        spec: a spec or a model name. A genattn checkpoint replaces it by the recipe and classes it holds
            (only the name must agree).
        checkpoint: a genattn checkpoint (training or converted), an MMDetection checkpoint, or a URL.
        image_size: (min_size, max_size) of the model's resize; overrides the spec's and the checkpoint's.
        device: where to put the model (default: CUDA if available).

    Returns:
        The model and the spec it was built from.
    """
    if isinstance(spec, str):
        spec = ModelSpec.create(spec)
    state = None
    if checkpoint is not None and not re.match(r"^[a-z]+://", str(checkpoint)):
        state = _read(str(checkpoint))
    if state is not None and "recipe" in state and "model" in state:
        recipe = Recipe.from_dict(state["recipe"])
        if recipe.model != spec.name:
            raise ValueError(f"checkpoint {checkpoint} holds {recipe.model}, not {spec.name}")
        meta = state.get("meta") or {}
        spec = ModelSpec(recipe, _tuple(meta.get("category_ids")), _tuple(meta.get("class_names")))
    if image_size:
        spec = spec.replace(min_size=image_size[0], max_size=image_size[1])
    model = spec.build()
    if state is not None and "recipe" in state and "model" in state:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {checkpoint} does not fit {spec.name}: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    elif checkpoint is not None:
        from genattn.models.zoo import load_weights

        load_weights(model, str(checkpoint))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), spec


def guess_model_name(path: str | os.PathLike) -> str:
    """The model name in a released file name, e.g. ``faster_rcnn_r50_fpn_attention_1111_1x_coco_20200130-
    403cccba.pth`` -> ``faster_rcnn_r50_fpn_attention_1111_1x_coco``.

    Raises:
        ValueError: the file name holds no recognisable model name.
    """
    match = re.match(r"(faster_rcnn_\w+?_\d+x_coco)", Path(path).name)
    if not match:
        raise ValueError(f"cannot tell the model from the file name {Path(path).name}; pass --model NAME")
    return match.group(1)


def convert_checkpoint_file(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | ModelSpec | None = None
                            ) -> Path:
    """Convert an MMDetection checkpoint file into a genattn checkpoint that ``--checkpoint`` accepts.

    Every key must be accounted for (``genattn.models.convert`` raises otherwise); the result loads strictly
    into the model. The output is written atomically.

    Args:
        src: the MMDetection checkpoint.
        dst: the file to write.
        model: the model name or spec (default: the name in ``src``'s file name, COCO classes).

    Returns:
        The path written.
    """
    from genattn.models.convert import convert_mmdet_checkpoint

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    spec = model if isinstance(model, ModelSpec) else ModelSpec.create(model or guess_model_name(src))
    net = spec.build()
    state = convert_mmdet_checkpoint(_read(str(src)), net)
    net.load_state_dict(state, strict=True)
    out = {"format": CONVERTED_FORMAT, "model": net.state_dict(), "recipe": spec.recipe.to_dict(),
           "meta": {"category_ids": list(net.category_ids), "class_names": list(net.class_names),
                    "converted_from": src.name}, "epoch": 0, "iter": 0}
    dst.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(out, dst)
