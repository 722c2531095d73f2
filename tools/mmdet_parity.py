"""Parity check: genattn's detectors against MMDetection itself, for the same weights and images.

Run by hand (CI does not: MMDetection is not a dependency of genattn). The oracle lives in its own venv:

    python -m venv /tmp/mmdet2 --system-site-packages     # reuses the system torch / torchvision
    /tmp/mmdet2/bin/pip install wheel
    /tmp/mmdet2/bin/pip install --no-build-isolation mmcv==1.7.2 mmdet==2.28.2   # mmcv 1.x without ops
    cd <repo root> && PYTHONPATH=src /tmp/mmdet2/bin/python tools/mmdet_parity.py [--models NAME ...] [--quick]

mmcv 1.7.2 installs without its compiled ops; ``tools/mmcv_ops_shim.py`` puts an ``mmcv.ops`` of our own in place
before MMDetection is imported. Its NMS, RoIAlign and DCN run torchvision's kernels by default, or, with
``--kernels mmcv``, mmcv's own CPU kernels compiled (once, a few minutes, cached in ~/.cache/genattn) from the
C++ sources the mmcv 1.7.2 package ships (``tools/mmcv_kernels.py``; needs g++ and ninja). Only the latter
makes the MMDetection side independent of torchvision's kernels, which our detector uses.

For each model (the four seed models and the two reference models) the script
1. builds MMDetection's detector from MMDetection's own config file (``configs/empirical_attention/...``,
   ``faster_rcnn/...``, ``dcn/...`` shipped inside the mmdet package; no pretrained weights);
2. randomises every weight with a fixed seed so that every part matters: attention ``gamma`` != 0 and random
   position biases, non-zero DCN offset convs (offsets of about a pixel), BatchNorm running statistics set from
   the test image and then perturbed, and RPN / box-head output layers rescaled so that objectness logits have
   std 2, class logits std ``--cls-logit-std`` and deltas a plausible size (not saturated, so not near-tied);
3. saves it as an MMDetection checkpoint ``{'state_dict', 'meta'}`` and loads that file into ours with
   ``genattn.models.get_model(name, weights=PATH)`` (strict);
4. runs both in eval mode on synthetic images (480x640 and a wide 300x917) and compares, feeding both networks
   MMDetection's own pre-processed tensor (its cv2 resize, normalisation, padding) so that the networks are
   compared and not the resize:
   - ``C2..C5`` (backbone) and ``P2..P6`` (FPN): max |ours - mmdet| and that relative to max |mmdet|;
   - RPN proposals: count, rank-wise match (same position, IoU > 0.99), set match (any of ours, IoU > 0.99);
   - RoI head on MMDetection's proposals (before any threshold): pooled features, softmax scores, box deltas;
   - final detections: the fraction of MMDetection's detections matched by one of ours with the same class,
     IoU > 0.99 and |score diff| < 1e-4 (and the other way round);
   - end to end through the public APIs (``model([uint8 image])`` vs MMDetection's pipeline + model): the same
     match rate, now including our pre-processing, whose normalised input is compared with MMDetection's first
     ('identical' when bit-equal);
   - the float path (``model([image / 255])``, a float resize): its input difference, and MMDetection run on that
     input against MMDetection on its own, which shows what that difference alone does to random networks.
Our labels are COCO category ids; MMDetection's are indices 0..79 in sorted-id order: mapped before comparing.

``--train`` runs the training comparison instead (``tools/mmdet_train_parity.py``: losses, assignments, gradients,
SGD steps, learning rates).

Reading the output: one Markdown table per model, one column per image. Float noise (float32, different
summation orders) shows as relative differences around 1e-6; match rates should be 1.000.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ops_shim  # noqa: E402  (must come before mmdet)

# The kernel choice must be known before MMDetection is imported (it is repeated in main()'s parser for --help).
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--kernels", choices=("torchvision", "mmcv"), default="torchvision")
KERNELS = _pre.parse_known_args()[0].kernels if __name__ == "__main__" else "torchvision"
mmcv_ops_shim.install(KERNELS)
warnings.filterwarnings("ignore")

import mmcv  # noqa: E402
import mmdet  # noqa: E402
from mmcv.utils import build_from_cfg  # noqa: E402
from mmdet.core import bbox2roi  # noqa: E402
from mmdet.datasets import CocoDataset  # noqa: E402
from mmdet.datasets.pipelines import Compose  # noqa: E402
from mmdet.models import build_detector  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from genattn.models import get_model  # noqa: E402

CONFIGS = {
    "faster_rcnn_r50_fpn_attention_1111_1x_coco": "empirical_attention/faster_rcnn_r50_fpn_attention_1111_1x_coco.py",
    "faster_rcnn_r50_fpn_attention_0010_1x_coco": "empirical_attention/faster_rcnn_r50_fpn_attention_0010_1x_coco.py",
    "faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco":
        "empirical_attention/faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco.py",
    "faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco":
        "empirical_attention/faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco.py",
    "faster_rcnn_r50_fpn_1x_coco": "faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py",
    "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco": "dcn/faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco.py",
}
_ = build_from_cfg  # imported to fail early when mmcv is not the 1.x line


def config_dir() -> str:
    return os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A natural-ish RGB uint8 image: smooth colour fields, textured shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (3, max(h // 40, 2), max(w // 40, 2))).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=(h, w), mode="bicubic",
                                          align_corners=False)[0].permute(1, 2, 0).numpy()
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 20, h / 4), rng.uniform(w / 20, w / 4)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        stripes = 20 * np.sin(xx / rng.uniform(2, 9) + yy / rng.uniform(2, 9))
        img[mask] = colour + stripes[mask, None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def build_mmdet(name: str) -> tuple[nn.Module, mmcv.Config]:
    cfg = mmcv.Config.fromfile(os.path.join(config_dir(), CONFIGS[name]))
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    model = build_detector(cfg.model)
    return model.eval(), cfg


@torch.no_grad()
def randomise(model: nn.Module, image: torch.Tensor, seed: int, cls_logit_std: float, attn_qk_gain: float = 0.5,
              offset_gain: float = 0.1) -> None:
    """Random weights under which every part of the network changes the output (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    def uniform_(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}"
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                uniform_(p, 0.5, 1.5) if pname == "weight" else normal_(p, 0.2)
            elif pname == "gamma":  # attention output scale: 0 at init would make the block the identity
                uniform_(p, 0.5, 1.5)
            elif pname in ("appr_bias", "geom_bias"):
                normal_(p, 1.0 / math.sqrt(p.shape[-1]))
            elif "conv_offset" in full:
                # Offsets of about a pixel, fractional, varying over the image; the input-dependent part is kept
                # small, as in trained DCNs: large offset weights make the output chaotic in float32 noise.
                normal_(p, offset_gain / math.sqrt(p[0].numel())) if p.dim() > 1 else uniform_(p, -1.0, 1.0)
            elif p.dim() > 1:
                gain = 0.1 if ("fc_reg" in full or "rpn_reg" in full) else math.sqrt(2.0)
                if any(k in full for k in ("query_conv", "key_conv", "appr_geom_fc")):
                    # mmcv does not scale the energies by 1/sqrt(d); kaiming-sized q/k would give near one-hot
                    # softmaxes whose argmax flips with float noise (a chaotic network, unlike a trained one).
                    gain = attn_qk_gain
                normal_(p, gain / math.sqrt(p[0].numel()))
            else:
                normal_(p, 0.1)
    # BatchNorm statistics of "a trained network": the test image's own batch statistics, then perturbed.
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    model.backbone(image)
    for m in bns:
        m.eval()
        m.momentum = 0.1
        m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1 * m.running_var.sqrt())
        m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.8)
        # A channel that is (nearly) constant on the calibration image would get a std of ~sqrt(eps) and amplify
        # float noise ~300x; trained statistics come from many images and have no such channels.
        m.running_var.clamp_(min=0.1 * m.running_var.mean().item())
    # Output layers scaled so their outputs have the spread of a trained detector's, whatever the feature scale:
    # saturated sigmoids / softmaxes (scores of exactly 1.0) would make the rankings ties.
    feats = model.extract_feat(image)
    rpn_logits, rpn_deltas = model.rpn_head(feats)
    _rescale(model.rpn_head.rpn_cls, torch.cat([t.flatten() for t in rpn_logits]), 2.0)
    _rescale(model.rpn_head.rpn_reg, torch.cat([t.flatten() for t in rpn_deltas]), 0.2)
    proposals = model.rpn_head.simple_test_rpn(feats, [dict(img_shape=tuple(image.shape[-2:]) + (3,))])
    res = model.roi_head._bbox_forward(feats, bbox2roi([p[:, :4] for p in proposals]))
    _rescale(model.roi_head.bbox_head.fc_cls, res["cls_score"].flatten(), cls_logit_std)
    _rescale(model.roi_head.bbox_head.fc_reg, res["bbox_pred"].flatten(), 0.5)


def _rescale(layer: nn.Module, outputs: torch.Tensor, std: float) -> None:
    """Scale ``layer``'s weight and bias so that ``outputs`` (what it gave) would have standard deviation ``std``."""
    factor = std / max(outputs.std().item(), 1e-12)
    layer.weight.mul_(factor)
    layer.bias.mul_(factor)


def save_mmdet_checkpoint(model: nn.Module, cfg: mmcv.Config, path: str) -> None:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"mmdet_version": mmdet.__version__, "CLASSES": tuple(CocoDataset.CLASSES), "config": cfg.pretty_text}
    torch.save({"state_dict": state, "meta": meta}, path + ".tmp")
    os.replace(path + ".tmp", path)


def mmdet_preprocess(cfg: mmcv.Config, rgb: np.ndarray, scale: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """MMDetection's test pipeline on an in-memory image: ``([1, 3, Hp, Wp], img_meta)``; ``scale`` =
    (min_size, max_size)."""
    steps = [dict(type="LoadImageFromWebcam")] + [dict(s) for s in cfg.data.test.pipeline[1:]]
    steps[1]["img_scale"] = (scale[1], scale[0])  # MultiScaleFlipAug: (long, short) limits
    data = Compose(steps)(dict(img=np.ascontiguousarray(rgb[..., ::-1])))  # MMDetection loads BGR
    img = data["img"][0][None]
    meta = data["img_metas"][0].data
    meta["batch_input_shape"] = tuple(img.shape[-2:])
    return img, meta


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"SHAPE {tuple(a.shape)} vs {tuple(b.shape)}"
    d = (a - b).abs().max().item()
    ref = a.abs().max().item()
    return f"{d:.2e} (rel {d / max(ref, 1e-30):.1e})"


def input_diff(ours: torch.Tensor, ref: torch.Tensor) -> str:
    """Normalised network inputs: 'identical', or the max / mean |diff| and the share of values that differ."""
    if ours.shape != ref.shape:
        return f"SIZE {tuple(ours.shape)} vs {tuple(ref.shape)}"
    if torch.equal(ours, ref):
        return "identical"
    d = (ours - ref).abs()
    return f"max {d.max().item():.3f}, mean {d.mean().item():.4f}, differing {(d > 0).float().mean().item():.3f}"


def match_detections(ref_boxes, ref_scores, ref_labels, boxes, scores, labels, iou=0.99, score_tol=1e-4):
    """Greedy one-to-one matching, best reference first: same label, IoU > iou, |score diff| < score_tol."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return 0, 0.0, 0.0
    ious = box_iou(ref_boxes, boxes)
    used = torch.zeros(len(boxes), dtype=torch.bool)
    matched, worst_box, worst_score = 0, 0.0, 0.0
    for i in torch.argsort(ref_scores, descending=True).tolist():
        ok = (~used) & (labels == ref_labels[i]) & (ious[i] > iou) & ((scores - ref_scores[i]).abs() < score_tol)
        if ok.any():
            j = int(torch.nonzero(ok)[torch.argmax(ious[i][ok])])
            used[j] = True
            matched += 1
            worst_box = max(worst_box, (boxes[j] - ref_boxes[i]).abs().max().item())
            worst_score = max(worst_score, abs(scores[j] - ref_scores[i]).item())
    return matched, worst_box, worst_score


def proposal_match(ref: torch.Tensor, ours: torch.Tensor) -> str:
    n = min(len(ref), len(ours))
    if n == 0:
        return f"{len(ours)} vs {len(ref)}"
    ious = box_iou(ref, ours)
    rank = (ious[:n, :n].diagonal() > 0.99).float().mean().item()
    anym = (ious.max(1).values > 0.99).float().mean().item()
    return f"{len(ours)} vs {len(ref)}; rank {rank:.3f}; set {anym:.3f}"


def detection_row(ref, ours) -> str:
    (rb, rs, rl), (ob, os_, ol) = ref, ours
    m, wb, ws = match_detections(rb, rs, rl, ob, os_, ol)
    m2, _, _ = match_detections(ob, os_, ol, rb, rs, rl)
    return (f"{len(ob)} vs {len(rb)}; matched {m / max(len(rb), 1):.3f} / {m2 / max(len(ob), 1):.3f}; "
            f"max box {wb:.1e}, score {ws:.1e}; top score {rs.max().item() if len(rs) else 0:.3f}")


@torch.no_grad()
def compare(name: str, images: list[np.ndarray], seed: int, cls_logit_std: float, workdir: str,
            scale: tuple[int, int], attn_qk_gain: float, dtype: torch.dtype, offset_gain: float) -> list[dict]:
    mm, cfg = build_mmdet(name)
    calib, _ = mmdet_preprocess(cfg, images[0], scale)
    randomise(mm, calib, seed, cls_logit_std, attn_qk_gain, offset_gain)
    path = os.path.join(workdir, f"{name}.pth")
    save_mmdet_checkpoint(mm, cfg, path)
    # Strict load through our converter.
    ours = get_model(name, weights=path, min_size=scale[0], max_size=scale[1]).eval()
    mm.to(dtype)
    ours.to(dtype)
    cat_ids = torch.tensor(ours.category_ids)
    rows = []
    for rgb in images:
        r: dict[str, str] = {}
        img, meta = mmdet_preprocess(cfg, rgb, scale)
        img = img.to(dtype)
        metas = [meta]
        h, w = meta["img_shape"][:2]
        sf = [float(s) for s in meta["scale_factor"][:2]]
        r["input (mmdet pipeline)"] = f"{rgb.shape[0]}x{rgb.shape[1]} -> {h}x{w}, padded {tuple(img.shape[-2:])}"
        c_mm = mm.backbone(img)
        c_ours = ours.backbone(img)
        for i, (a, b) in enumerate(zip(c_mm, c_ours)):
            r[f"C{i + 2}"] = maxdiff(a, b)
        p_mm = list(mm.neck(c_mm))
        p_ours = ours.neck(c_ours)
        for i, (a, b) in enumerate(zip(p_mm, p_ours)):
            r[f"P{i + 2}"] = maxdiff(a, b)
        props_mm = mm.rpn_head.simple_test_rpn(p_mm, metas)[0]
        props_ours = ours.rpn_head(p_ours, [(h, w)])[0][0]
        r["RPN proposals (ours vs mmdet)"] = proposal_match(props_mm[:, :4], props_ours)
        # Second stage on MMDetection's proposals, before thresholds: isolates the RoI head.
        rois = bbox2roi([props_mm[:, :4]])
        res = mm.roi_head._bbox_forward(p_mm, rois)
        feats_ours = ours.roi_head.bbox_roi_extractor(p_ours, rois)
        logits, deltas = ours.roi_head.bbox_head(feats_ours)
        r["RoI features (mmdet proposals)"] = maxdiff(res["bbox_feats"], feats_ours)
        r["class scores, softmax (mmdet proposals)"] = maxdiff(res["cls_score"].softmax(-1), logits.softmax(-1))
        r["box deltas (mmdet proposals)"] = maxdiff(res["bbox_pred"], deltas)
        test_cfg = mm.roi_head.test_cfg
        db, dl = mm.roi_head.simple_test_bboxes(p_mm, metas, [props_mm], test_cfg, rescale=True)
        ref = (db[0][:, :4], db[0][:, 4], cat_ids[dl[0]])
        det = ours.roi_head(p_ours, [props_mm[:, :4]], [(h, w)], None, [tuple(sf)])[0][0]
        r["detections on mmdet proposals"] = detection_row(ref, (det["boxes"], det["scores"],
                                                                 cat_ids[det["labels"]]))
        det = ours.roi_head(p_ours, [props_ours], [(h, w)], None, [tuple(sf)])[0][0]
        r["detections, each its own proposals"] = detection_row(ref, (det["boxes"], det["scores"],
                                                                      cat_ids[det["labels"]]))
        # End to end: MMDetection's pipeline + model vs our public call on the decoded uint8 image.
        img_u8 = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
        batch, _ = ours.transform([img_u8])
        r["input: ours (uint8) vs mmdet's"] = input_diff(batch.tensors, img)
        out = ours([img_u8])[0]
        e2e_ours = (out["boxes"], out["scores"], out["labels"])
        r["end to end: ours (public call, uint8) vs mmdet (its pipeline)"] = detection_row(ref, e2e_ours)
        # The float path (float images in [0, 1]: float resize), and what its input difference alone does:
        # MMDetection run on that input against MMDetection on its own (random networks are far more
        # input-sensitive than trained ones).
        fbatch, _ = ours.transform([img_u8.to(dtype) / 255])
        r["input: ours (float path) vs mmdet's"] = input_diff(fbatch.tensors, img)
        if tuple(fbatch.image_sizes[0]) == (h, w) and tuple(fbatch.tensors.shape) == tuple(img.shape):
            x = mm.extract_feat(fbatch.tensors)
            props = mm.rpn_head.simple_test_rpn(x, metas)
            db2, dl2 = mm.roi_head.simple_test_bboxes(x, metas, props, test_cfg, rescale=True)
            mm_on_float = (db2[0][:, :4], db2[0][:, 4], cat_ids[dl2[0]])
            r["mmdet on the float-path input vs on its own"] = detection_row(ref, mm_on_float)
            loose = match_detections(*ref, *mm_on_float, iou=0.9, score_tol=0.05)[0] / max(len(ref[0]), 1)
            r["  the same, loose (IoU > 0.9, |ds| < 0.05)"] = f"{loose:.3f}"
        rows.append(r)
    return rows


@torch.no_grad()
def kernel_rows(seed: int) -> dict[str, str]:
    """mmcv's compiled CPU kernels against torchvision's, on random float64 inputs (needs ``--kernels mmcv``)."""
    from torchvision import ops as tv

    ext = mmcv_ops_shim._MMCV_EXT
    g = torch.Generator().manual_seed(seed)
    rows = {}
    # RoIAlign, aligned and not, adaptive and fixed sampling; boxes partly outside the map.
    x = torch.randn(2, 8, 25, 38, generator=g, dtype=torch.float64)
    xy = torch.rand(300, 2, generator=g, dtype=torch.float64) * 330 - 15
    wh = torch.rand(300, 2, generator=g, dtype=torch.float64) * 200 + 0.5
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=g).double(), xy, xy + wh], 1)
    for aligned in (True, False):
        for ratio in (0, 2):
            out = x.new_zeros(300, 8, 7, 7)
            ext.roi_align_forward(x, rois, out, x.new_zeros(0), x.new_zeros(0), 7, 7, 1 / 8, ratio, 1, aligned)
            ref = tv.roi_align(x, rois, 7, 1 / 8, ratio, aligned)
            rows[f"RoIAlign aligned={aligned} sampling_ratio={ratio}"] = maxdiff(out, ref)
    # NMS: identical kept indices (mmcv offset 0 = torchvision's box size convention).
    boxes = torch.cat([xy, xy + wh], 1).float()  # mmcv's CPU NMS is float32-only
    scores = torch.rand(300, generator=g)
    same = all(torch.equal(ext.nms(boxes, scores, t, 0), tv.nms(boxes, scores, t)) for t in (0.3, 0.5, 0.7))
    rows["NMS kept indices (IoU 0.3 / 0.5 / 0.7)"] = "identical" if same else "DIFFERENT"
    # Deformable conv v1 with offsets of several pixels (also outside the map), stride 1 and 2, 2 offset groups.
    for stride, dg in ((1, 1), (2, 1), (1, 2)):
        inp = torch.randn(2, 6, 13, 17, generator=g, dtype=torch.float64)
        w = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
        oh, ow = (13 + 2 - 3) // stride + 1, (17 + 2 - 3) // stride + 1
        off = torch.randn(2, 2 * dg * 9, oh, ow, generator=g, dtype=torch.float64) * 3
        out = inp.new_empty(2, 4, oh, ow)
        ext.deform_conv_forward(inp, w, off, out, inp.new_empty(0), inp.new_empty(0), 3, 3, stride, stride, 1, 1,
                                1, 1, 1, dg, 2)
        ref = tv.deform_conv2d(inp, off, w, None, stride, 1, 1)
        rows[f"DCN v1 stride {stride}, deform_groups {dg}"] = maxdiff(out, ref)
    return rows


def main() -> None:
    if "--train" in sys.argv[1:]:  # the training comparison, with its own options (see its --help)
        import mmdet_train_parity

        sys.exit(mmdet_train_parity.main([a for a in sys.argv[1:] if a != "--train"]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="--train [OPTIONS]: the training comparison, tools/mmdet_train_parity.py")
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cls-logit-std", type=float, default=2.0,
                        help="std of the class logits fc_cls is scaled to; larger spreads the class scores")
    parser.add_argument("--quick", action="store_true", help="one small image at test scale 320x544 (smoke run)")
    parser.add_argument("--min-size", type=int, default=800, help="test scale, short side (MMDetection: 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="test scale, long side (MMDetection: 1333)")
    parser.add_argument("--attn-qk-gain", type=float, default=0.25,
                        help="gain of the random attention query/key/position weights (sqrt(2) = kaiming: very "
                             "sharp attention, in float32 a chaotic network)")
    parser.add_argument("--offset-gain", type=float, default=0.1,
                        help="gain of the random DCN offset-conv weights (1 = kaiming-like: offsets that swing by "
                             "pixels with the input, chaotic in float32)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float64 removes float noise: differences left are real")
    parser.add_argument("--kernels", choices=("torchvision", "mmcv"), default="torchvision",
                        help="what runs NMS / RoIAlign / DCN on the MMDetection side: torchvision (shim) or mmcv's "
                             "own CPU kernels compiled from the installed mmcv sources (tools/mmcv_kernels.py)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [(240, 320)] if args.quick else [(480, 640), (300, 917)]
    scale = (320, 544) if args.quick else (args.min_size, args.max_size)
    images = [synthetic_image(h, w, seed=args.seed + i) for i, (h, w) in enumerate(sizes)]
    print(f"MMDetection {mmdet.__version__}, mmcv {mmcv.__version__} (ops: {KERNELS} kernels via the shim), torch "
          f"{torch.__version__}; seed {args.seed}; fc_cls gain {args.cls_logit_std}; "
          f"attention q/k gain {args.attn_qk_gain}; DCN offset gain {args.offset_gain}; {args.dtype}; "
          f"test scale {scale}\n")
    if KERNELS == "mmcv":
        print("### mmcv's CPU kernels vs torchvision's (float64, random inputs)\n")
        print("| kernel | max abs diff (rel) |\n|---|---|")
        for key, value in kernel_rows(args.seed).items():
            print(f"| {key} | {value} |")
        print(flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            t0 = time.time()
            rows = compare(name, images, args.seed, args.cls_logit_std, workdir, scale, args.attn_qk_gain,
                           getattr(torch, args.dtype), args.offset_gain)
            print(f"### {name}  ({time.time() - t0:.0f} s)\n")
            print("| quantity | " + " | ".join(f"image {i + 1}" for i in range(len(rows))) + " |")
            print("|---|" + "---|" * len(rows))
            for key in rows[0]:
                print(f"| {key} | " + " | ".join(r[key] for r in rows) + " |")
            print(flush=True)


if __name__ == "__main__":
    main()
