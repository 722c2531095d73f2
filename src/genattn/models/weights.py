"""Weights: the one reader of checkpoint files and the one builder of a model with weights.

:func:`read_checkpoint` takes a path or URL (downloaded once into the torch hub cache, hash-checked), loads it
with ``torch.load(weights_only=True)`` (numpy scalars and arrays, which MMDetection's ``meta`` dicts can hold,
are the only classes allowed beyond tensors and containers) and tells the kinds apart:

==========  =============================================================================================
genattn     ours (``genattn train`` / ``genattn convert``): ``{'format': 'genattn-checkpoint-v2', 'model':
            state dict, 'config': ModelConfig, 'classes': ...}`` (v1 files of genattn 0.1 are read too)
mmdet-v2    MMDetection 2.x: ``{'meta': {'config': text, 'CLASSES': ...}, 'state_dict': {'roi_head.*' ...}}``
mmdet-v1    MMDetection 1.x: ``bbox_head.*`` at the top level, background class first
state-dict  a bare detector state dict (``backbone.*``, ...) without MMDetection's meta
imagenet    torchvision's ImageNet ResNet (``conv1.*``, ``layer1..4.*``, ``fc.*``): a backbone initialisation
==========  =============================================================================================

and says which model the file holds: the config stored in a genattn file, else the one MMDetection's config
text describes (parsed, never executed: :mod:`genattn.models.mmdet_config`), else the model name its file name
starts with. :func:`load_model` builds that model (or checks it against the one asked for) and loads the
weights strictly; ``get_model``, training, testing and every command go through it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from genattn.models.classes import Classes
from genattn.models.config import ModelConfig, legacy_model_config, name_in_file_name
from genattn.models.convert import convert_mmdet_checkpoint
from genattn.models.mmdet_config import model_config_from_mmdet

__all__ = ["FORMAT", "Checkpoint", "read_checkpoint", "load_file", "load_model", "convert_file", "download",
           "genattn_record", "atomic_save", "atomic_write_text", "is_url"]

FORMAT = "genattn-checkpoint-v2"
_LEGACY_FORMAT = "genattn-checkpoint-v1"


def is_url(source: Any) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", str(source)))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


# -- files ------------------------------------------------------------------------------------------------


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` so that ``path`` holds either its old content or all of ``obj``, never a part."""
    path = Path(path)
    _atomic(path, lambda f: torch.save(obj, f))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see either the old or the new content, never a part."""
    _atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def download(url: str, hash_prefix: str | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` into ``<torch hub dir>/checkpoints`` once; return the local path.

    The SHA-256 of a new download must start with ``hash_prefix`` (default: the hex digits after the last '-'
    of the file name, torch hub's convention, when present); a mismatching file is deleted and an error raised.

    Raises:
        RuntimeError: the download failed or the hash differs (one line naming the file).
    """
    filename = os.path.basename(url.split("?")[0])
    if hash_prefix is None:
        m = re.search(r"-([0-9a-f]{6,})\.", filename)
        hash_prefix = m.group(1) if m else None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / filename
    if dst.exists():
        return dst
    tmp = folder / f"{filename}.{os.getpid()}.partial"
    try:
        try:
            torch.hub.download_url_to_file(url, str(tmp), None, progress=progress)
        except Exception as e:  # URLError, HTTPError, timeouts...: one line naming the file
            raise RuntimeError(f"checkpoint {filename}: download from {url} failed: {_one_line(e)}") from None
        if hash_prefix is not None:
            sha = hashlib.sha256()
            with open(tmp, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            if not digest.startswith(hash_prefix):
                raise RuntimeError(f"checkpoint {filename}: wrong hash (SHA-256 {digest[:len(hash_prefix)]}..., "
                                   f"expected {hash_prefix}...); the download is corrupt or not the released file")
        os.replace(tmp, dst)  # atomic: a half-written file never has the final name
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _numpy_globals() -> list:
    """The numpy classes a checkpoint's ``meta`` may pickle (scalars, arrays, dtypes), under numpy 2's module
    names and numpy 1's (files written with numpy 1 name ``numpy.core``)."""
    core = np._core if hasattr(np, "_core") else np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    dtypes = {type(np.dtype(t)) for t in "?bhilqBHILQefdgFDGUSV"} | {type(np.dtype("O"))}
    return [np.ndarray, np.dtype, scalar, reconstruct, *sorted(dtypes, key=str),
            (scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely: ``weights_only=True``, onto the CPU, one-line errors.

    Raises:
        ValueError: missing, truncated, corrupt, or holding objects other than tensors, containers and numpy
            values (a file that needs code to unpickle is refused, never run).
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"checkpoint {name}: not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = re.search(r"WeightsUnpickler error:\s*(.*)", str(e))
        reason = detail.group(1).strip() if detail else _one_line(e)
        refused = re.match(r"Unsupported global: GLOBAL (\S+)", reason)
        if refused:
            raise ValueError(f"checkpoint {name}: holds a {refused.group(1)} object, which only running code could "
                             f"rebuild; refused (files are read with weights_only=True)") from None
        raise ValueError(f"checkpoint {name}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{reason[:200]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError,
            TypeError, IndexError) as e:
        raise ValueError(f"checkpoint {name}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{_one_line(e)}") from None


# -- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file, read and recognised.

    Attributes:
        source: the path or URL as given.
        path: the local file.
        kind: 'genattn', 'mmdet-v2', 'mmdet-v1', 'state-dict' or 'imagenet' (see the module docstring).
        state_dict: the weights (for MMDetection files in MMDetection's layout; the converter maps them).
        content: the whole file (optimizer state, meta, ... as saved).
        config: the model the file says it holds (its own record or MMDetection's config text), or None.
        classes: its classes (a genattn record, MMDetection's ``meta['CLASSES']``, or the box head's size).
    """

    source: str
    path: Path
    kind: str
    state_dict: dict[str, Tensor]
    content: dict[str, Any]
    config: ModelConfig | None
    classes: Classes | None

    @property
    def named(self) -> str | None:
        """The model name the file's name (or URL) starts with, or None."""
        return name_in_file_name(self.source) or name_in_file_name(self.path)


def _tensors(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor)
                                                          for k, v in obj.items())


def _state_dict_of(obj: Mapping[str, Any], where: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if _tensors(obj.get(key)):
            return dict(obj[key])
    if _tensors(obj):
        return dict(obj)
    raise ValueError(f"checkpoint {where}: not a checkpoint (expected a state dict of tensors, or one under "
                     f"'state_dict' or 'model')")


def _mmdet_classes(meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> Classes | None:
    names = meta.get("CLASSES")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return Classes.make(names=tuple(names))
    fc_cls = next((v for k, v in state.items() if k.endswith("bbox_head.fc_cls.weight")), None)
    return None if fc_cls is None else Classes.make(num_classes=fc_cls.shape[0] - 1)


def read_checkpoint(source: str | os.PathLike, *, progress: bool = True) -> Checkpoint:
    """Read a checkpoint file or URL and recognise it (see the module docstring).

    Raises:
        ValueError: the file is missing, unreadable, or not a checkpoint of a known kind (one line naming it).
        RuntimeError: a download failed.
    """
    where = str(source)
    path = download(where, progress=progress) if is_url(where) else Path(source)
    obj = load_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {where}: expected a dict, got {type(obj).__name__}")
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("genattn-checkpoint"):
        try:
            if fmt == FORMAT:
                config = ModelConfig.from_dict(obj["config"], "config")
                classes = Classes.from_dict(obj["classes"])
            elif fmt == _LEGACY_FORMAT:
                config = legacy_model_config(obj["recipe"], "recipe")
                classes = Classes.from_dict(obj["meta"])
            else:
                raise ValueError(f"format {fmt!r} is not one this genattn reads ({FORMAT}); upgrade genattn")
            if not _tensors(obj.get("model")):
                raise ValueError("no state dict under 'model'")
        except (KeyError, TypeError) as err:
            raise ValueError(f"checkpoint {where}: a damaged genattn checkpoint (missing {err})") from None
        except ValueError as err:
            raise ValueError(f"checkpoint {where}: {err}") from None
        return Checkpoint(where, path, "genattn", dict(obj["model"]), dict(obj), config, classes)

    state = _state_dict_of(obj, where)
    keys = [k.removeprefix("module.") for k in state]
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    if any(k.startswith("backbone.") for k in keys):
        if any(k.startswith("bbox_head.") for k in keys):
            kind = "mmdet-v1"
        elif meta or any(re.match(r"neck\.\w+_convs\.\d+\.conv\.", k) for k in keys):
            kind = "mmdet-v2"
        else:
            kind = "state-dict"
        config = model_config_from_mmdet(meta.get("config"), where)
        return Checkpoint(where, path, kind, state, dict(obj), config, _mmdet_classes(meta, state))
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return Checkpoint(where, path, "imagenet", state, dict(obj), None, None)
    raise ValueError(f"checkpoint {where}: neither a detector's weights (backbone.*, ...) nor a ResNet's "
                     f"(conv1.*, layer1.*, ...)")


# -- building ---------------------------------------------------------------------------------------------


def _resolve(ckpt: Checkpoint | None, model: str | ModelConfig | None) -> ModelConfig:
    """The model to build: what the file says it holds (content, then file name), checked against ``model``."""
    requested = ModelConfig.from_name(model) if isinstance(model, str) else model
    if ckpt is None:
        if requested is None:
            raise ValueError("no model given: name one (and/or give weights that say which model they are)")
        return requested
    if ckpt.kind == "imagenet":
        raise ValueError(f"checkpoint {ckpt.source}: a torchvision ImageNet ResNet, weights of a backbone only; "
                         f"use it as pretrained_backbone (an initialisation), not as a detector's weights")
    found, origin = ckpt.config, "its config"
    if found is None and ckpt.named is not None:
        found, origin = ModelConfig.from_name(ckpt.named), "its file name"
    if found is not None and requested is not None and found.name != requested.name:
        hint = " (rename the file if its name is wrong)" if origin == "its file name" else ""
        raise ValueError(f"checkpoint {ckpt.source} holds {found.name} (from {origin}), not {requested.name}{hint}")
    if ckpt.config is not None:
        return ckpt.config
    if requested is not None:  # the caller's details (a narrower backbone, ...) for a file that has none
        return requested
    if found is not None:
        return found
    raise ValueError(f"checkpoint {ckpt.source}: cannot tell the model (no config inside, no model name in the file "
                     f"name); name it (--model NAME)")


def load_model(model: str | ModelConfig | None = None, weights: str | os.PathLike | Checkpoint | None = None, *,
               changes: Mapping[str, Any] | Sequence[str] = (), impl: str | None = None,
               classes: Classes | None = None, pretrained_backbone: str | os.PathLike | None = None, device: str | torch.device | None = None,
               progress: bool = True) -> tuple[torch.nn.Module, ModelConfig]:
    """Build a detector, with weights if given: the one place a model meets its weights.

    Args:
        model: a model name or configuration; optional when ``weights`` say which model they are (a config
            inside, or a released file name). When both are given they must name the same model.
        weights: a checkpoint path, URL or :class:`Checkpoint` of any kind but 'imagenet'; loaded strictly.
        changes: changes to the configuration (a nested mapping or ``key.sub=value`` strings), applied on top
            of the file's or the name's, e.g. ``{'heads': {'box_score_thresh': 0.3}}``.
        impl: the attention path of every attention block (``GeneralizedAttention``'s ``impl``); no effect on
            a model without attention.
        classes: the classes to predict. Default: the file's (a genattn file records them; MMDetection's name
            them or the box head's size counts them), else COCO's 80. A genattn file refuses other classes.
        pretrained_backbone: without ``weights``: ``'torchvision'`` (torchvision's ImageNet ResNet of the
            model's depth) or a ResNet state-dict file or URL, loaded into the backbone.
        device: where to put the model (default: the CPU).
        progress: show download progress.

    Returns:
        ``(model, config)``: in eval mode when weights were loaded, else in train mode.

    Raises:
        ValueError: an unknown name, a model that contradicts the file, classes that do not fit, a file that does
            not fit the model (one line naming the file and the keys).
    """
    ckpt = weights if isinstance(weights, Checkpoint) or weights is None else read_checkpoint(weights,
                                                                                              progress=progress)
    config = _resolve(ckpt, model)
    config = config.model_config().updated(changes).with_impl(impl)
    if ckpt is not None and ckpt.classes is not None:
        if classes is not None and ckpt.kind == "genattn" and classes != ckpt.classes:
            raise ValueError(f"checkpoint {ckpt.source}: predicts categories {list(ckpt.classes.category_ids)[:8]}"
                             f"{'...' if len(ckpt.classes) > 8 else ''}, not the ones asked for "
                             f"{list(classes.category_ids)[:8]}{'...' if len(classes) > 8 else ''}")
        classes = classes or ckpt.classes
    net = config.build(classes)
    if ckpt is not None:
        net.load_state_dict(convert_mmdet_checkpoint(ckpt.state_dict, net, where=ckpt.source), strict=True)
        net.eval()
    elif pretrained_backbone is not None:
        from genattn.models.imagenet import load_imagenet_weights

        load_imagenet_weights(net.backbone, pretrained_backbone, progress=progress)
    if device is not None:
        net.to(device)
    return net, config


def genattn_record(state_dict: Mapping[str, Tensor], config: ModelConfig, classes: Classes, **extra: Any
                   ) -> dict[str, Any]:
    """The content of a genattn checkpoint (``extra``: training state, meta, ...)."""
    return {"format": FORMAT, "model": dict(state_dict), "config": config.model_config().to_dict(),
            "classes": classes.to_dict(), **extra}


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | ModelConfig | None = None,
                 changes: Mapping[str, Any] | Sequence[str] = (), impl: str | None = None
                 ) -> tuple[Path, ModelConfig]:
    """Convert a checkpoint (an MMDetection one, any file name) into a genattn checkpoint, written atomically.

    Every key must be accounted for; the result loads strictly and records its model and classes, so
    ``--checkpoint`` needs nothing else. The model comes from the file's config, its file name, or ``model``.

    Returns:
        The path written and the model's configuration.
    """
    ckpt = read_checkpoint(src)
    net, config = load_model(model, ckpt, changes=changes, impl=impl)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = {"converted_from": Path(str(src)).name, "source_kind": ckpt.kind}
    record = genattn_record(net.state_dict(), config, Classes(net.category_ids, net.class_names), meta=meta)
    return atomic_save(record, dst), config
