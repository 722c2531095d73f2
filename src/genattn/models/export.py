"""A whole detector as one graph: ``torch.export`` (``.pt2``) and ONNX, from one uint8 image to its detections.

The graph is ``model([image])[0]`` for one uint8 RGB image ``[3, H, W]`` of any size: MMDetection's resize
(OpenCV's fixed-point bilinear, :mod:`genattn.models.resize`), normalisation and padding, backbone, FPN, RPN
with its NMS, RoIAlign, the box head, the class-wise NMS and the rescaling to the input's pixels. It returns
``boxes`` float32 ``[D, 4]`` (xyxy in the input's pixels), ``scores`` float32 ``[D]`` and ``labels`` int64 ``[D]``
(dataset category ids), best first. ``H`` and ``W`` are dynamic: the sizes the model computes from them (the
resized size, feature maps, anchors) are symbolic expressions in the graph, not the example's numbers.

ONNX goes through ``torch.export`` and PyTorch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which
needs ``onnxscript``): the TorchScript exporter would have to trace the size arithmetic as Python numbers, so the
resize would be the example's. The exporter writes Python float arithmetic on sizes as float32 ONNX ops; the
resize rule rounds ``side * scale + 0.5`` in float64 (Python's float, as MMDetection's), and float32 gives another
size for some images (e.g. 29x2494 -> 16x1333 instead of 15x1333), so the translations of those few operations
are replaced by float64 ones (:func:`_float64_symbols`, which also fixes Python's floor division of sizes).
NMS (genattn's ``genattn::nms``, torchvision's underneath) and torchvision's ``roi_align`` become ONNX's
``NonMaxSuppression`` and ``RoiAlign``; deformable convolution becomes ``DeformConv``. A saved program holds
``genattn::nms``: load it with :func:`load_program` (or import :mod:`genattn.models` first).

Attention blocks run a path that traces into plain tensor operations: ``'auto'`` becomes ``key_only`` or
``separable`` where they apply and ``sdpa`` otherwise (the same result up to rounding; ``chunked`` runs Python
threads and ``flex`` a compiled kernel); ``materialize`` and ``sdpa`` set explicitly are kept.
"""

from __future__ import annotations

import contextlib
import operator
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from genattn.models.weights import _atomic

__all__ = ["ImageDetector", "export_program", "save_program", "load_program", "export_onnx", "require_onnx",
           "example_image", "EXPORTABLE_IMPLS"]

#: The oldest torch release export is tested with (torch 2.9.1 fails; releases between were not tried).
TESTED_TORCH = (2, 14)

#: Attention paths that trace into tensor operations (``'auto'`` is mapped onto one of them).
EXPORTABLE_IMPLS = ("materialize", "sdpa", "key_only", "separable")


class ImageDetector(nn.Module):
    """``model([image])[0]`` as a function of one image: ``image -> (boxes, scores, labels)``.

    Args:
        model: a :class:`~genattn.models.detector.FasterRCNN` (used in eval mode).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``image`` uint8 ``[3, H, W]`` RGB -> ``boxes [D, 4]``, ``scores [D]``, ``labels [D]`` (category ids)."""
        det = self.model([image])[0]
        return det["boxes"], det["scores"], det["labels"]


def _export_impl(module: nn.Module) -> str:
    from genattn.attention import paths

    impl = paths.resolve(module.impl, module.attention_type, module.spatial_range)
    if impl == "auto":
        usable = paths.applicable(module.attention_type, module.spatial_range)
        return next(n for n in ("key_only", "separable", "sdpa") if n in usable)
    if impl not in EXPORTABLE_IMPLS:
        raise ValueError(f"attention impl {impl!r} cannot be exported (it runs Python threads or a compiled "
                         f"kernel); use one of {EXPORTABLE_IMPLS} or 'auto'")
    return impl


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """Eval mode and traceable attention paths for the duration of an export; restored after."""
    from genattn.attention import GeneralizedAttention

    blocks = [m for m in model.modules() if isinstance(m, GeneralizedAttention)]
    saved = [m.impl for m in blocks]
    training = model.training
    try:
        for m in blocks:
            m.impl = _export_impl(m)
        model.eval()
        yield
    finally:
        for m, impl in zip(blocks, saved):
            m.impl = impl
        model.train(training)


def _check_model(model: nn.Module) -> None:
    from genattn.models.detector import FasterRCNN

    if not isinstance(model, FasterRCNN):
        raise ValueError(f"model: expected a genattn FasterRCNN, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"model: export needs float32 weights, got {sorted(map(str, dtypes))} (call .float())")


def example_image(model: nn.Module, size: tuple[int, int] | None = None) -> Tensor:
    """A deterministic uint8 ``[3, H, W]`` image to trace with (default a 3:4 landscape at the model's size)."""
    if size is None:
        short = model.transform.min_size
        size = (short, short * 4 // 3)
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    return torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g).to(device)


def export_program(model: nn.Module, example: Tensor | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``ImageDetector(model)`` with dynamic height and width.

    Args:
        model: the detector (float32; exported in eval mode, attention on a traceable path, both restored after).
        example: a uint8 ``[3, H, W]`` image to trace with (default :func:`example_image`); any size works
            afterwards.

    Returns:
        The ``ExportedProgram``; ``program.module()(image)`` gives ``(boxes, scores, labels)``.
    """
    _check_model(model)
    example = example_image(model) if example is None else example
    if example.dtype != torch.uint8 or example.dim() != 3 or example.shape[0] != 3:
        raise ValueError(f"example: expected a uint8 [3, H, W] image, got {example.dtype} {list(example.shape)}")
    dims = {1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC}
    with _exportable(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the exporter's notes on internal decompositions
        try:
            return torch.export.export(ImageDetector(model), (example,), dynamic_shapes={"image": dims})
        except Exception as e:
            if _torch_release() >= TESTED_TORCH:
                raise
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise RuntimeError(f"torch.export failed with torch {torch.__version__} ({type(e).__name__}: "
                               f"{first_line}); genattn's export is tested with torch "
                               f"{'.'.join(map(str, TESTED_TORCH))} (torch 2.9.1 fails): upgrade torch") from e


def _torch_release() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Write ``program`` to ``path`` (a ``.pt2`` file, written to a temporary name and renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda f: torch.export.save(program, f))
    return path


def load_program(path: str | os.PathLike) -> nn.Module:
    """The callable ``image -> (boxes, scores, labels)`` saved by :func:`save_program`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported program not found: {path}")
    return torch.export.load(path).module()


def _float64_symbols() -> dict:
    """ONNX translations that replace or add to the exporter's: Python's arithmetic on sizes in float64 (the
    exporter's own use float32) and with Python's floor division, a tensor modulo a symbolic size, and
    genattn's NMS operator."""
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_nms
    from onnxscript.onnx_types import DOUBLE

    def sym_float(self):
        return op.Cast(self, to=DOUBLE.dtype)

    def truediv(self, other):
        return op.Div(op.Cast(self, to=DOUBLE.dtype), op.Cast(other, to=DOUBLE.dtype))

    # Python constants in a sum or product with a size take the size's type (float64 after the casts above).
    def add(self, other):
        return op.Add(self, op.CastLike(other, self))

    def mul(self, other):
        return op.Mul(self, op.CastLike(other, self))

    # A tensor modulo a size (the attention's position indices): the exporter's translation wants a number.
    def remainder(self, other):
        return op.Mod(self, op.CastLike(other, self))

    # Python's // on sizes floors; the exporter's translation (ONNX's integer Div) truncates towards zero, which
    # differs for negative operands. (a - a mod b) / b is exact in integers and floors like Python.
    def floordiv(self, other):
        other = op.CastLike(other, self)
        return op.Div(op.Sub(self, op.Mod(self, other)), other)

    # genattn's NMS operator (genattn.models.nms) as the exporter translates torchvision's: NonMaxSuppression.
    return {torch.sym_float: sym_float, operator.truediv: truediv, operator.add: add, operator.mul: mul,
            operator.floordiv: floordiv, torch.ops.aten.remainder.Scalar: remainder,
            torch.ops.genattn.nms.default: torchvision_nms}


def require_onnx() -> None:
    """Raise ImportError (one line, naming the extra to install) when the ONNX exporter's packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the packages onnx and onnxscript ({e}); install them with "
                          "pip install 'genattn[export]'") from None


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor | None = None, *,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """Write the detector as an ONNX graph: input ``image`` uint8 ``[3, H, W]`` (H, W dynamic), outputs
    ``boxes`` float32 ``[D, 4]``, ``scores`` float32 ``[D]``, ``labels`` int64 ``[D]``.

    Args:
        model: the detector (see :func:`export_program`).
        path: the ``.onnx`` file to write (written to a temporary name and renamed).
        example: the image to trace with (see :func:`export_program`).
        program: an ``ExportedProgram`` of ``model`` already made by :func:`export_program` (skips tracing).

    Returns:
        ``path``.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (``pip install 'genattn[export]'``).
    """
    require_onnx()
    program = export_program(model, example) if program is None else program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["image"],
                                         output_names=["boxes", "scores", "labels"],
                                         custom_translation_table=_float64_symbols(), verbose=False)
    data = onnx_program.model_proto.SerializeToString()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda f: f.write(data))
    return path
