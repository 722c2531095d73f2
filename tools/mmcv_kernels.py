"""Build mmcv's own CPU kernels (RoIAlign, NMS, deformable conv) from the installed mmcv 1.x package's sources.

mmcv-full as a whole cannot be built here, but the pip package ``mmcv==1.7.2`` ships its C++ sources
(``mmcv/ops/csrc``). This module JIT-compiles the few CPU kernels Faster R-CNN with DCN needs, with
``torch.utils.cpp_extension.load`` into a cache directory outside the repository, using a small binding of our
own (nothing of mmcv is copied into genattn: the sources are read from the installed package at build time).
``tools/mmcv_ops_shim.py`` uses them when asked (``--kernels mmcv`` in ``tools/mmdet_parity.py``), so the
MMDetection side of the parity check runs mmcv's real kernels instead of torchvision's.

The first build takes a few minutes on a small CPU; later runs reuse the cache.
"""

from __future__ import annotations

import os

_BINDING = r"""
#include <torch/extension.h>
using at::Tensor;
void roi_align_forward(Tensor input, Tensor rois, Tensor output, Tensor argmax_y, Tensor argmax_x,
                       int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
                       int pool_mode, bool aligned);
Tensor nms(Tensor boxes, Tensor scores, float iou_threshold, int offset);
void deform_conv_forward(Tensor input, Tensor weight, Tensor offset, Tensor output, Tensor columns, Tensor ones,
                         int kW, int kH, int dW, int dH, int padW, int padH, int dilationW, int dilationH,
                         int group, int deformable_group, int im2col_step);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("roi_align_forward", &roi_align_forward);
  m.def("nms", &nms);
  m.def("deform_conv_forward", &deform_conv_forward);
}
"""

_SOURCES = ["pytorch/roi_align.cpp", "pytorch/cpu/roi_align.cpp", "pytorch/nms.cpp", "pytorch/cpu/nms.cpp",
            "pytorch/deform_conv.cpp", "pytorch/cpu/deform_conv.cpp"]


def load(build_dir: str | None = None, verbose: bool = False):
    """Compile (once) and import the kernels; returns the extension module."""
    import mmcv
    from torch.utils.cpp_extension import load as load_extension

    csrc = os.path.join(os.path.dirname(mmcv.__file__), "ops", "csrc")
    if not os.path.isdir(os.path.join(csrc, "pytorch", "cpu")):
        raise RuntimeError(f"mmcv's C++ sources are not in {csrc} (need the mmcv 1.x pip package)")
    build_dir = build_dir or os.path.join(os.path.expanduser("~"), ".cache", "genattn", "mmcv_kernels")
    os.makedirs(build_dir, exist_ok=True)
    binding = os.path.join(build_dir, "binding.cpp")
    if not os.path.exists(binding) or open(binding).read() != _BINDING:
        with open(binding, "w") as f:
            f.write(_BINDING)
    # pytorch/x.cpp and pytorch/cpu/x.cpp share a file name, which ninja cannot build side by side: compile each
    # through a uniquely named one-line file that includes it.
    sources = [binding]
    for src in _SOURCES:
        unit = os.path.join(build_dir, src.replace("/", "_"))
        line = f'#include "{os.path.join(csrc, src)}"\n'
        if not os.path.exists(unit) or open(unit).read() != line:
            with open(unit, "w") as f:
                f.write(line)
        sources.append(unit)
    return load_extension("genattn_mmcv_cpu_kernels", sources,
                          extra_include_paths=[os.path.join(csrc, "common"), os.path.join(csrc, "pytorch")],
                          extra_cflags=["-O2"], build_directory=build_dir, verbose=verbose)
