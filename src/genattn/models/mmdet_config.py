"""The model an MMDetection checkpoint holds, read from the config text in its ``meta['config']``.

MMDetection writes its whole config into every checkpoint as Python source made of ``dict(...)`` calls (2.x:
the merged ``Config.pretty_text``; 1.x: the config file). That text comes from the internet, so it is never
executed: :func:`parse_config_text` walks its syntax tree and keeps only literals (numbers, strings, booleans,
None, lists, tuples, ``{...}`` and ``dict(k=v, ...)``); anything else (names, other calls, ``**kwargs``,
arithmetic) becomes an :class:`Opaque` marker that is an error only if the model's description needs it.

:func:`model_config_from_mmdet` maps the ``model.backbone`` entry onto a :class:`ModelConfig`:

* 2.x: ``plugins=[dict(cfg=dict(type='GeneralizedAttention', ...), stages=(...), position='after_conv2')]``,
  ``dcn=dict(type='DCN', deform_groups=1, ...)``, ``stage_with_dcn=(...)``;
* 1.x: ``gen_attention=dict(...)``, ``stage_with_gen_attention=[[], [], [0, 1, ...], [...]]`` (block indices per
  stage; genattn wires whole stages, so a stage must list all its blocks or none),
  ``dcn=dict(modulated=False, deformable_groups=1, ...)``.

Depth (ResNet or ResNeXt), ``frozen_stages``, ``norm_eval`` and ``with_cp`` are taken too; the FPN and heads keep
the seed's settings, which every released empirical-attention model uses.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from typing import Any

from genattn.attention import AttentionConfig
from genattn.models.config import BackboneConfig, ModelConfig

__all__ = ["Opaque", "parse_config_text", "model_config_from_mmdet"]

logger = logging.getLogger(__name__)

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_ATTENTION_KEYS = {"spatial_range", "num_heads", "position_embedding_dim", "position_magnitude", "kv_stride",
                   "q_stride", "attention_type"}


@dataclass(frozen=True)
class Opaque:
    """A piece of config source that is not a plain literal (kept as text, never evaluated)."""

    source: str


def _value(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(kw.arg is None for kw in node.keywords):  # dict(**other)
            return Opaque(ast.get_source_segment(text, node) or "dict(**...)")
        return {kw.arg: _value(kw.value, text) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):  # {**other}
            return Opaque(ast.get_source_segment(text, node) or "{**...}")
        return {_value(k, text): _value(v, text) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.List):
        return [_value(v, text) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(v, text) for v in node.elts)
    try:
        return ast.literal_eval(node)  # constants and signed numbers only; evaluates nothing else
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Opaque(ast.get_source_segment(text, node) or type(node).__name__)


def parse_config_text(text: str) -> dict[str, Any]:
    """The top-level assignments ``name = value`` of a config text, values as literals or :class:`Opaque`.

    Raises:
        ValueError: the text is not Python syntax.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"config text is not valid Python syntax ({err})") from None
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _value(stmt.value, text)
    return out


class _Unsupported(ValueError):
    pass


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise _Unsupported(message)


def _literal(d: dict, key: str, default: Any = None) -> Any:
    value = d.get(key, default)
    _need(not isinstance(value, Opaque), f"backbone.{key} is not a literal ({getattr(value, 'source', '')})")
    return value


def _attention(cfg: Any, where: str) -> AttentionConfig:
    _need(isinstance(cfg, dict), f"{where} is not a dict")
    cfg = {k: v for k, v in cfg.items() if k != "type"}
    unknown = sorted(set(cfg) - _ATTENTION_KEYS)
    _need(not unknown, f"{where} has arguments genattn does not know: {unknown}")
    _need(not any(isinstance(v, Opaque) for v in cfg.values()), f"{where} holds non-literal values")
    return AttentionConfig.from_dict(cfg, where)


def _stage_flags(value: Any, where: str) -> tuple[bool, ...]:
    _need(isinstance(value, (list, tuple)) and len(value) == 4 and all(v in (0, 1) for v in value),
          f"{where}={value!r} is not 4 booleans")
    return tuple(bool(v) for v in value)


def _backbone(bb: dict) -> BackboneConfig:
    kind = bb.get("type", "ResNet")
    _need(kind in ("ResNet", "ResNeXt"), f"backbone type {kind!r} (genattn builds ResNet and ResNeXt)")
    depth = _literal(bb, "depth", 50)
    _need(depth in _DEPTHS, f"ResNet depth {depth!r} (genattn knows {sorted(_DEPTHS)})")
    _need(_literal(bb, "style", "pytorch") == "pytorch", f"style={bb.get('style')!r} (genattn builds 'pytorch')")
    _need(_literal(bb, "num_stages", 4) == 4, "num_stages other than 4")
    kwargs: dict[str, Any] = {"layers": _DEPTHS[depth]}
    if kind == "ResNeXt":  # MMDetection's base_width is the width per group, as torchvision's width_per_group
        kwargs.update(groups=_literal(bb, "groups", 1), width_per_group=_literal(bb, "base_width", 4))
    for key in ("frozen_stages", "norm_eval", "with_cp"):
        if key in bb:
            kwargs[key] = _literal(bb, key)

    dcn = _literal(bb, "dcn")
    if dcn is not None:
        _need(isinstance(dcn, dict), "backbone.dcn is not a dict")
        kind = dcn.get("type", "DCNv2" if dcn.get("modulated") else "DCN")
        _need(kind in ("DCN", "DCNv2"), f"dcn type {kind!r}")
        groups = dcn.get("deform_groups", dcn.get("deformable_groups", 1))
        _need(groups == 1, f"deformable groups {groups!r} (genattn builds 1)")
        kwargs["dcn_modulated"] = kind == "DCNv2"
        kwargs["dcn_stages"] = _stage_flags(_literal(bb, "stage_with_dcn", (False,) * 4), "stage_with_dcn")

    plugins = _literal(bb, "plugins")
    if plugins:
        _need(isinstance(plugins, (list, tuple)) and len(plugins) == 1 and isinstance(plugins[0], dict),
              "backbone.plugins other than one GeneralizedAttention plugin")
        plugin = plugins[0]
        cfg = plugin.get("cfg")
        _need(isinstance(cfg, dict) and cfg.get("type") == "GeneralizedAttention",
              f"plugin {cfg.get('type') if isinstance(cfg, dict) else cfg!r} (genattn knows GeneralizedAttention)")
        kwargs["attention_cfg"] = _attention(cfg, "plugins[0].cfg")
        stages = plugin.get("stages")  # MMDetection: None means every stage
        kwargs["attention_stages"] = _stage_flags((True,) * 4 if stages is None else stages, "plugins[0].stages")
        kwargs["attention_position"] = plugin.get("position", "after_conv2")

    gen = _literal(bb, "gen_attention")
    if gen is not None:  # MMDetection 1.x
        blocks = _literal(bb, "stage_with_gen_attention", [[], [], [], []])
        _need(isinstance(blocks, (list, tuple)) and len(blocks) == 4, "stage_with_gen_attention is not 4 lists")
        flags = []
        for count, chosen in zip(kwargs["layers"], blocks):
            chosen = sorted(set(chosen))
            _need(chosen in ([], list(range(count))), f"attention in some blocks of a stage only ({chosen} of "
                                                      f"{count}; genattn wires whole stages)")
            flags.append(bool(chosen))
        kwargs["attention_cfg"] = _attention(gen, "gen_attention")
        kwargs["attention_stages"] = tuple(flags)
    return BackboneConfig(**kwargs)


def model_config_from_mmdet(text: Any, where: str) -> ModelConfig | None:
    """The model a checkpoint's config text describes.

    Args:
        text: ``meta['config']`` (anything but a string gives None).
        where: the file, for messages.

    Returns:
        The configuration, or None when the text holds no ``model = dict(..., backbone=dict(...))`` or is not
        Python syntax (a damaged text says nothing; the model is then taken from elsewhere, with a warning).

    Raises:
        ValueError: a readable config of a model genattn does not build (the reason named).
    """
    if not isinstance(text, str):
        return None
    try:
        assignments = parse_config_text(text)
    except ValueError as err:
        logger.warning("checkpoint %s: meta['config'] ignored: %s", where, err)
        return None
    model = assignments.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("backbone"), dict):
        return None
    try:
        _need(model.get("type", "FasterRCNN") == "FasterRCNN", f"detector type {model.get('type')!r}")
        return ModelConfig(backbone=_backbone(model["backbone"]))
    except _Unsupported as err:
        raise ValueError(f"checkpoint {where}: its config describes a model genattn does not build: {err}") from None
    except ValueError as err:
        raise ValueError(f"checkpoint {where}: meta['config']: {err}") from None
