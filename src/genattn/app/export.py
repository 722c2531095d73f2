"""``genattn export``: a checkpoint's detector as ``OUT.onnx`` and ``OUT.pt2`` (see :mod:`genattn.models.export`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from genattn.models import load_model
from genattn.models.export import example_image, export_onnx, export_program, require_onnx, save_program

__all__ = ["FORMATS", "export_files"]

FORMATS = ("onnx", "pt2")


def export_files(model: str, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                 formats: Sequence[str] = FORMATS, changes: Mapping[str, Any] | Sequence[str] = (),
                 impl: str | None = None) -> dict[str, Path]:
    """Load ``model`` with the weights of ``checkpoint`` (on the CPU) and write ``OUT.onnx`` and/or ``OUT.pt2``.

    Args:
        model: a model name (the checkpoint must hold it).
        checkpoint: a genattn or MMDetection checkpoint, file or URL.
        out: the output path without its suffix (a ``.onnx`` or ``.pt2`` suffix given is dropped).
        formats: any of ``'onnx'``, ``'pt2'``.
        changes: model setting changes, as :func:`genattn.models.load_model` takes them.
        impl: the attention path (``None``/``'auto'``: a traceable path is chosen).

    Returns:
        ``{format: path written}``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats: expected some of {FORMATS}, got {list(formats)}")
    if "onnx" in formats:
        require_onnx()  # before minutes of tracing
    net, _ = load_model(model, checkpoint, changes=changes, impl=impl, device="cpu")
    out = Path(out)
    if out.suffix in (".onnx", ".pt2"):
        out = out.with_suffix("")
    program = export_program(net, example_image(net))
    written = {}
    if "pt2" in formats:
        written["pt2"] = save_program(program, out.with_name(out.name + ".pt2"))
    if "onnx" in formats:
        written["onnx"] = export_onnx(net, out.with_name(out.name + ".onnx"), program=program)
    return written
