"""Training parity: genattn's losses, assignments, gradients and SGD steps against MMDetection 2.28.2's.

Run by hand in the MMDetection venv (see ``tools/mmdet_parity.py``, whose ``--train`` runs this file)::

    PYTHONPATH=src /tmp/mmdet2/bin/python tools/mmdet_train_parity.py [--models NAME ...] [--dtype float64]
    PYTHONPATH=src /tmp/mmdet2/bin/python tools/mmdet_train_parity.py --fixture   # rewrite the CI fixture

For each model: MMDetection's detector from its own config with the random weights of the inference check
(``mmdet_parity.randomise``), saved as an MMDetection checkpoint and loaded by genattn (strict); a uint8 batch of
two images of different sizes with 3 and 2 boxes; genattn's network input, which is checked to be MMDetection's
train pipeline output bit for bit (Resize, RandomFlip, Normalize, Pad, collate; also on a flipped batch), fed to
MMDetection's ``forward_train``. Both samplers take every candidate (sampler size 10^7), so nothing random is
left. Compared:

- assignments per image: anchors positive / negative / ignored and sampled positives / negatives (RPN), the same
  for the RoIs (assignment of the proposals; sampled including the ground truth added as proposals);
- each loss, end to end (each side its own proposals) and with the RoI stage on MMDetection's proposals for both
  (proposals can differ by float noise; on shared ones the RoI losses are comparable);
- the gradient of the total loss (RoI stage on shared proposals) for every parameter: relative difference
  ``max |g - g_mmdet| / max |g_mmdet|``, worst and median over parameters; the sets of trained parameters;
- the sampled counts with MMDetection's sampler sizes (RPN 256 at 0.5, RoI 512 at 0.25): determined although
  the samples are random;
- two SGD steps of the 1x recipe (genattn: its ``Recipe`` and ``WarmupMultiStepLR``; MMDetection: its config's
  optimizer built by mmcv and mmcv's ``StepLrUpdaterHook``): genattn's optimizer on MMDetection's gradients (must
  equal MMDetection's parameters exactly), and each side on its own gradients (each parameter's difference
  relative to its update; float32 rounds a weight near 1 moved by 1e-5 to 1e-2 of the move, and the second step's
  gradients carry the network's sensitivity to the first step's differences: see ``compare_updates``);
- once: the learning rate at every iteration of a shortened 1x schedule (12 epochs of 10 iterations, warmup 25,
  steps 8 and 11), genattn's schedule against mmcv's LR hook driven as mmcv's runner drives it.

float64: MMDetection computes its base anchors in float32 even in a float64 model, which changes which anchors
tie for a ground truth's best IoU; its anchor generator's base anchors are recomputed in float64 (its own
``gen_base_anchors``), so both sides have the same anchors. NMS, RoIAlign and DCN run torchvision's kernels on
both sides here (the inference check shows mmcv's CPU kernels equal them). Exit status 1 when anything differs
beyond float noise (thresholds: ``TOLERANCES``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "engine"))
import mmdet_parity as mp  # noqa: E402  (installs the mmcv.ops shim before MMDetection is imported)
import mmdet_training_case as case  # noqa: E402

import mmcv  # noqa: E402
from mmcv.runner import build_optimizer  # noqa: E402
from mmcv.runner.hooks.lr_updater import StepLrUpdaterHook  # noqa: E402
from mmdet_train_oracle import (MMRecorder, float64_anchors, mm_losses, mmdet_train_batch,  # noqa: E402
                                mmdet_training_anchors, name_map, tiny_mmdet)

from genattn.engine.recipes import Recipe  # noqa: E402
from genattn.engine.schedule import WarmupMultiStepLR  # noqa: E402
from genattn.models import get_model  # noqa: E402

EVERY = case.EVERY
SIZES = ((480, 640), (300, 917))
BOXES = (((40.0, 50.0, 300.0, 400.0), (280.0, 120.0, 620.0, 330.0), (500.5, 10.0, 560.0, 70.5)),
         ((30.0, 40.0, 250.0, 290.0), (600.0, 5.0, 900.0, 150.0)))
LABELS = ((1, 18, 62), (3, 1))
#: (float32, float64) bounds of what counts as float noise.
#: float64 is not float64 noise on MMDetection's side: it computes the RPN's classification loss (``label.float()``)
#: and all box regression targets (``bbox2delta``) in float32 in any model, differences of about 1e-7. In float32
#: the random attention networks amplify float noise (the same models agree to 1e-7 in float64; MMDetection's own
#: float32 losses of the 1111 DCN model move by up to 2e-3 between runs with 1 and 2 threads), so their float32 losses
#: get a looser bound and their gradients are reported, not judged; the parameters after two steps, each side on
#: its own gradients, carry the network's sensitivity to the first step's differences (judged in float64 only);
#: the optimizer on the same gradients must agree exactly.
TOLERANCES = {"loss": (1e-4, 1e-6), "loss_attention": (1e-2, 1e-6), "grad_worst": (1e-4, 1e-6),
              "grad_median": (1e-5, 1e-7),
              "params_2_steps": (None, 1e-3), "sgd_same_grads": (1e-12, 1e-12), "lr": (1e-12, 1e-12)}


def inputs(flip: bool) -> tuple[list[np.ndarray], list[torch.Tensor], list[dict[str, Any]]]:
    """The batch: RGB uint8 images (numpy and genattn's tensors) and genattn targets (COCO ids)."""
    rgb = [mp.synthetic_image(h, w, seed=10 + i) for i, (h, w) in enumerate(SIZES)]
    images = [torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous() for x in rgb]
    targets = [{"boxes": torch.tensor(b), "labels": torch.tensor(lab), "flip": flip} for b, lab in zip(BOXES, LABELS)]
    return rgb, images, targets


def shared_proposals(model: nn.Module, proposals: list[torch.Tensor]):
    """Make genattn's RoI head take ``proposals`` (MMDetection's) instead of its RPN's, until removed."""
    def hook(module, args):
        return (args[0], [p.to(args[1][0].dtype) for p in proposals], *args[2:])
    return model.roi_head.register_forward_pre_hook(hook)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (0 when both are 0)."""
    d = (a.double() - b.double()).abs().max().item()
    ref = b.double().abs().max().item()
    return d / ref if ref > 0 else d


def compare_params(mm_values: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], names: dict[str, str]
                   ) -> tuple[float, str, float, list[str]]:
    """Worst (value, name) and median relative differences over MMDetection's tensors, and names on one side only."""
    diffs = {}
    only = []
    for k, v in mm_values.items():
        o = ours.get(names.get(k, ""))
        if (v is None) != (o is None):
            only.append(k)
        elif v is not None:
            diffs[k] = rel(o, v)
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst, statistics.median(diffs.values()), only


def lr_rows() -> tuple[float, int]:
    """genattn's learning rate at every iteration of a shortened 1x schedule against mmcv's StepLrUpdaterHook."""
    epochs, per_epoch, warmup = 12, 10, 25
    recipe = Recipe.from_name("faster_rcnn_r50_fpn_1x_coco", warmup_iters=warmup)
    _, sched = recipe_sgd([nn.Parameter(torch.zeros(1))], recipe)
    cfg = mmcv.Config.fromfile(os.path.join(mp.config_dir(), mp.CONFIGS["faster_rcnn_r50_fpn_1x_coco"]))
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
    lr_cfg = {k: v for k, v in cfg.lr_config.items() if k != "policy"}
    assert cfg.lr_config.policy == "step" and cfg.runner.max_epochs == epochs
    hook = StepLrUpdaterHook(**{**lr_cfg, "warmup_iters": warmup})
    runner = SimpleNamespace(optimizer=theirs, epoch=0, iter=0, data_loader=range(per_epoch), max_epochs=epochs,
                             max_iters=epochs * per_epoch)
    hook.before_run(runner)
    worst, n = 0.0, 0
    for epoch in range(epochs):
        runner.epoch = epoch
        hook.before_train_epoch(runner)
        for i in range(per_epoch):
            runner.iter = epoch * per_epoch + i
            hook.before_train_iter(runner)
            ours_lr = sched.step(runner.iter, epoch)
            worst = max(worst, abs(ours_lr - theirs.param_groups[0]["lr"]) / theirs.param_groups[0]["lr"])
            n += 1
    return worst, n


def build_pair(name: str, seed: int, scale: tuple[int, int], workdir: str, calib_rgb: np.ndarray):
    """MMDetection's model with the inference check's random weights and genattn's loaded from its checkpoint,
    both samplers taking every candidate."""
    mm, cfg = mp.build_mmdet(name)
    calib, _ = mp.mmdet_preprocess(cfg, calib_rgb, scale)
    mp.randomise(mm, calib, seed, 2.0, 0.25, 0.1)
    path = os.path.join(workdir, f"{name}.pth")
    mp.save_mmdet_checkpoint(mm, cfg, path)
    ours = get_model(name, weights=path, min_size=scale[0], max_size=scale[1])
    set_sizes(mm, ours, EVERY, EVERY)
    return mm, cfg, ours


def set_sizes(mm: nn.Module, ours: nn.Module, rpn: int, roi: int) -> None:
    mm.rpn_head.sampler.num, mm.roi_head.bbox_sampler.num = rpn, roi
    case.set_sampler_sizes(ours, rpn, roi)


def check_inputs(cfg, ours: nn.Module, scale, images, targets, rgb) -> tuple[dict, Any, bool]:
    """MMDetection's train pipeline on the uint8 batch, and whether genattn's network input and resized (flipped)
    boxes equal it bit for bit."""
    batch_ours, resized = ours.transform(images, targets)
    labels = [torch.tensor([ours.category_ids.index(c) for c in t["labels"].tolist()]) for t in targets]
    batch = mmdet_train_batch(cfg, rgb, targets, scale, labels)
    same = torch.equal(batch_ours.tensors, batch["img"]) and all(
        torch.equal(t["boxes"], b) for t, b in zip(resized, batch["gt_bboxes"]))
    return batch, batch_ours, same


def compare(name: str, dtype: torch.dtype, seed: int, scale: tuple[int, int], workdir: str) -> dict[str, Any]:
    i = 0 if dtype == torch.float32 else 1
    mm, cfg, ours = build_pair(name, seed, scale, workdir, inputs(False)[0][0])
    mm.to(dtype).train()
    ours.to(dtype).train()
    if dtype == torch.float64:
        float64_anchors(mm)
        mmdet_training_anchors(ours)
    names = name_map(mm, ours)
    r: dict[str, Any] = {}
    same_f = check_inputs(cfg, ours, scale, *inputs(True)[1:], inputs(True)[0])[2]
    rgb, images, targets = inputs(False)
    batch, batch_ours, same = check_inputs(cfg, ours, scale, images, targets, rgb)
    r["input = MMDetection's (plain / flipped)"] = (same, same_f)
    rec = MMRecorder(mm)
    img = batch_ours.tensors
    # 1. MMDetection's forward_train and gradients.
    mm.zero_grad()
    mm_loss = mm_losses(mm, batch, dtype, img)
    sum(mm_loss.values()).backward()
    mm_log, mm_props = copy.deepcopy(rec.log), rec.proposals
    # 2. genattn, RoI stage on MMDetection's proposals; gradients.
    ours.zero_grad()
    handle = shared_proposals(ours, mm_props)
    with case.recording(ours) as log:
        loss = ours(images, targets)
    handle.remove()
    sum(loss.values()).backward()
    for key in mm_log:
        r[f"{key} (per image; RoI on shared proposals)"] = (log[key], mm_log[key])
    r["losses, shared proposals"] = {k: (loss[k].item(), mm_loss[k].item()) for k in mm_loss}
    mm_grads = {k: p.grad for k, p in mm.named_parameters()}
    our_grads = {k: p.grad for k, p in ours.named_parameters()}
    r["gradients (worst, name, median, only one side)"] = compare_params(mm_grads, our_grads, names)
    # 3. End to end: each side its own proposals (MMDetection's are those of 1.; no gradients needed).
    with torch.no_grad():
        with case.recording(ours) as log:
            e2e = ours(images, targets)
        r["losses, each its own proposals"] = {k: (e2e[k].item(), mm_loss[k].item()) for k in mm_loss}
        r["RoI counts, each its own proposals"] = ((log["roi_assigned"], log["roi_sampled"]),
                                                  (mm_log["roi_assigned"], mm_log["roi_sampled"]))
        # 4. MMDetection's sampler sizes: the sampled counts (the RoI stage on shared proposals).
        set_sizes(mm, ours, case.REAL_SAMPLERS["rpn"], case.REAL_SAMPLERS["roi"])
        rec.reset()
        mm_losses(mm, batch, dtype, img)
        handle = shared_proposals(ours, rec.proposals)
        with case.recording(ours) as log:
            ours(images, targets)
        handle.remove()
        r["sampled with sizes 256 / 512 (RPN, RoI)"] = copy.deepcopy(((log["rpn_sampled"], log["roi_sampled"]),
                                                                     (rec.log["rpn_sampled"], rec.log["roi_sampled"])))
        set_sizes(mm, ours, EVERY, EVERY)
    # 5. Two SGD steps of the 1x recipe; the first with the gradients above. genattn's optimizer also steps a copy
    # of the weights on MMDetection's gradients: that isolates the optimizer from the network's sensitivity.
    recipe = Recipe.from_name(name)
    opt, sched = recipe_sgd([p for p in ours.parameters() if p.requires_grad], recipe)
    shadow = {k: nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for k, p in ours.named_parameters()}
    shadow_opt, shadow_sched = recipe_sgd([p for p in shadow.values() if p.requires_grad], recipe)
    mm_opt = build_optimizer(mm, cfg.optimizer)
    hook = StepLrUpdaterHook(**{k: v for k, v in cfg.lr_config.items() if k != "policy"})
    runner = SimpleNamespace(optimizer=mm_opt, epoch=0, iter=0, data_loader=range(100), max_epochs=12,
                             max_iters=1200)
    hook.before_run(runner)
    hook.before_train_epoch(runner)
    start_mm = {k: v.detach().clone() for k, v in mm.named_parameters()}
    for it in range(2):
        runner.iter = it
        hook.before_train_iter(runner)
        sched.step(it, 0)
        shadow_sched.step(it, 0)
        if it == 1:
            mm.zero_grad()
            ours.zero_grad()
            sum(mm_losses(mm, batch, dtype, img).values()).backward()
            handle = shared_proposals(ours, rec.proposals)
            sum(ours(images, targets).values()).backward()
            handle.remove()
        r[f"lr at iteration {it}"] = (opt.param_groups[0]["lr"], mm_opt.param_groups[0]["lr"])
        for k, p in mm.named_parameters():
            shadow[names[k]].grad = None if p.grad is None else p.grad.detach().clone()
        mm_opt.step()
        opt.step()
        shadow_opt.step()
    r["SGD on MMDetection's gradients: max |p - p_mmdet| / update"] = compare_updates(
        mm, shadow, start_mm, names, 0.0)[0]
    r["parameters after 2 SGD steps (worst, name, median, beyond noise)"] = compare_updates(
        mm, ours, start_mm, names, TOLERANCES["params_2_steps"][i] or 0.0)
    return r


def recipe_sgd(params: list[nn.Parameter], recipe: Recipe) -> tuple[torch.optim.SGD, WarmupMultiStepLR]:
    """The optimizer and schedule ``genattn train`` builds from a recipe (lr for the recipe's base batch)."""
    opt = torch.optim.SGD(params, lr=recipe.lr(recipe.base_batch_size), momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    return opt, WarmupMultiStepLR(opt, steps=recipe.lr_steps, gamma=recipe.lr_gamma, warmup_iters=recipe.warmup_iters,
                                  warmup_ratio=recipe.warmup_ratio, steps_unit=recipe.lr_steps_unit)


def compare_updates(mm: nn.Module, ours: nn.Module | dict[str, nn.Parameter], start_mm: dict[str, torch.Tensor],
                    names: dict[str, str], tol: float) -> tuple[float, str, float, list[str]]:
    """Parameters after the SGD steps: ``max |p - p_mmdet|`` relative to the size of MMDetection's update
    ``max |p_mmdet - p_start|`` (worst, median), and the parameters beyond float noise: a difference above ``tol``
    of the update and above 4 ulps of the parameter's largest value (a float32 weight near 1 moved by 1e-5 cannot
    be compared to better than 1e-2 of its update)."""
    ours_now = ours if isinstance(ours, dict) else dict(ours.named_parameters())
    ratios, beyond = {}, []
    for k, v in mm.named_parameters():
        if not v.requires_grad:
            if ours_now[names[k]].requires_grad:
                beyond.append(f"{k} (trained by genattn only)")
            continue
        o = ours_now[names[k]].detach().double()
        v = v.detach().double()
        d = (o - v).abs().max().item()
        u = (v - start_mm[k].double()).abs().max().item()
        ratios[k] = d / u if u > 0 else d
        if d > tol * u and d > 4 * torch.finfo(start_mm[k].dtype).eps * v.abs().max().item():
            beyond.append(k)
    worst = max(ratios, key=ratios.get)
    return ratios[worst], worst, statistics.median(ratios.values()), beyond


def verdict(r: dict[str, Any], dtype: torch.dtype, attention: bool) -> list[str]:
    """What differs beyond float noise (see ``TOLERANCES``)."""
    i = 0 if dtype == torch.float32 else 1
    bad = []
    if r["input = MMDetection's (plain / flipped)"] != (True, True):
        bad.append("network input or targets differ from MMDetection's")
    for key, value in r.items():
        if ("assigned" in key or "sampled" in key) and "own proposals" not in key and value[0] != value[1]:
            bad.append(f"{key}: {value[0]} vs {value[1]}")
    for k, (a, b) in r["losses, shared proposals"].items():
        if abs(a - b) > TOLERANCES["loss_attention" if attention else "loss"][i] * abs(b):
            bad.append(f"{k}: {a} vs {b}")
    worst, where, median, only = r["gradients (worst, name, median, only one side)"]
    if only:
        bad.append(f"gradients: only one side has {only[:5]}")
    if not (attention and dtype == torch.float32):
        if worst > TOLERANCES["grad_worst"][i]:
            bad.append(f"gradients: worst {worst:.2e} at {where}")
        if median > TOLERANCES["grad_median"][i]:
            bad.append(f"gradients: median {median:.2e}")
    beyond = r["parameters after 2 SGD steps (worst, name, median, beyond noise)"][3]
    if beyond and (dtype == torch.float64 or any("only" in b for b in beyond)):
        bad.append(f"parameters after 2 SGD steps: {beyond[:5]}")
    if r["SGD on MMDetection's gradients: max |p - p_mmdet| / update"] > TOLERANCES["sgd_same_grads"][i]:
        bad.append("the optimizer on MMDetection's gradients differs from MMDetection's")
    for it in (0, 1):
        a, b = r[f"lr at iteration {it}"]
        if abs(a - b) > TOLERANCES["lr"][i] * b:
            bad.append(f"lr at iteration {it}: {a} vs {b}")
    return bad


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], float):
        worst, where, median, only = value
        return f"worst {worst:.1e} ({where}), median {median:.1e}; {len(only)} " + ", ".join(only[:5])
    if isinstance(value, dict):
        return "; ".join(f"{k} {a:.9g} vs {b:.9g} (rel {abs(a - b) / max(abs(b), 1e-300):.1e})"
                         for k, (a, b) in value.items())
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], bool):
        same = "equal" if value[0] == value[1] else "DIFFERENT"
        return f"{same}: ours {value[0]}" + ("" if value[0] == value[1] else f", MMDetection {value[1]}")
    return str(value)


def fixture(path: str) -> bool:
    """Measure the CI case on MMDetection, compare with genattn and write the fixture; True when they agree."""
    ours = case.build_model()
    mm, cfg, names = tiny_mmdet(ours)
    images, targets = case.inputs()
    rgb = [im.permute(1, 2, 0).numpy() for im in images]
    scale = (case.MIN_SIZE, case.MAX_SIZE)
    batch, batch_ours, same = check_inputs(cfg, ours, scale, images, targets, rgb)
    rec = MMRecorder(mm)
    losses = mm_losses(mm, batch, torch.float64, batch["img"])
    sum(losses.values()).backward()
    to_mm = {v: k for k, v in names.items()}
    params = dict(mm.named_parameters())
    numbers: dict[str, Any] = {"losses": {k: v.item() for k, v in losses.items()}, **rec.log,
                               "grad_norms": {k: params[to_mm[k]].grad.norm().item() for k in case.GRAD_PARAMS}}
    mm.rpn_head.sampler.num, mm.roi_head.bbox_sampler.num = case.REAL_SAMPLERS["rpn"], case.REAL_SAMPLERS["roi"]
    rec.reset()
    with torch.no_grad():
        mm_losses(mm, batch, torch.float64, batch["img"])
    numbers["real_samplers"] = {"rpn_sampled": rec.log["rpn_sampled"], "roi_sampled": rec.log["roi_sampled"]}
    theirs = case.measure(ours)
    print(f"input (flip on image 2) = MMDetection's train pipeline: {same}")
    ok = same
    for key, value in numbers.items():
        if key in ("losses", "grad_norms"):
            worst = max(abs(theirs[key][k] - v) / abs(v) for k, v in value.items())
            ok &= worst < 1e-6  # MMDetection: RPN BCE and box targets in float32 even in float64
            print(f"{key}: max rel diff {worst:.1e}  {value}")
        else:
            ok &= theirs[key] == value
            print(f"{key}: {'equal' if theirs[key] == value else 'DIFFERENT'}  mmdet {value}, ours {theirs[key]}")
    record = {"what": "MMDetection's numbers of tests/engine/mmdet_training_case.py, written by "
                      "tools/mmdet_train_parity.py --fixture",
              "versions": {"mmdet": mp.mmdet.__version__, "mmcv": mmcv.__version__, "torch": torch.__version__},
              "mmdet": numbers}
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(mp.CONFIGS), choices=list(mp.CONFIGS))
    parser.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=800, help="training scale, short side (MMDetection: 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="training scale, long side (MMDetection: 1333)")
    parser.add_argument("--fixture", action="store_true",
                        help="only the CI case: compare, and write tests/engine/mmdet_training_case.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fixture:
        return 0 if fixture(os.path.join(os.path.dirname(case.__file__), "mmdet_training_case.json")) else 1
    worst_lr, n = lr_rows()
    print(f"MMDetection {mp.mmdet.__version__}, mmcv {mmcv.__version__}, torch {torch.__version__}; seed {args.seed}; "
          f"training scale {args.min_size}x{args.max_size}; images {SIZES} with 3 and 2 boxes\n")
    print(f"learning rate over a shortened 1x schedule ({n} iterations, warmup 25, steps at epochs 8 and 11), genattn "
          f"vs mmcv's StepLrUpdaterHook: max rel diff {worst_lr:.1e}\n")
    failures = [] if worst_lr <= TOLERANCES["lr"][0] else ["learning-rate schedule"]
    summary = []
    with tempfile.TemporaryDirectory() as workdir:
        for dtype_name in args.dtype:
            dtype = getattr(torch, dtype_name)
            for name in args.models:
                t0 = time.time()
                r = compare(name, dtype, args.seed, (args.min_size, args.max_size), workdir)
                bad = verdict(r, dtype, "attention" in name)
                failures += [f"{name} {dtype_name}: {b}" for b in bad]
                print(f"### {name}, {dtype_name} ({time.time() - t0:.0f} s): {'PASS' if not bad else 'FAIL'}\n")
                print("| quantity | genattn vs MMDetection |\n|---|---|")
                for key, value in r.items():
                    print(f"| {key} | {fmt(value)} |")
                print(flush=True)
                summary.append((name, dtype_name, r, bad))
    print("| model | dtype | counts (RPN, RoI) | max rel loss diff (shared / own proposals) | gradients worst / "
          "median | parameters after 2 steps: diff / update, worst / median | optimizer on the same gradients | "
          "verdict |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, dtype_name, r, bad in summary:
        counts = all(v[0] == v[1] for k, v in r.items() if ("assigned" in k or "sampled" in k) and "own" not in k)
        shared = max(abs(a - b) / abs(b) for a, b in r["losses, shared proposals"].values())
        own = max(abs(a - b) / abs(b) for a, b in r["losses, each its own proposals"].values())
        g = r["gradients (worst, name, median, only one side)"]
        u = r["parameters after 2 SGD steps (worst, name, median, beyond noise)"]
        same = r["SGD on MMDetection's gradients: max |p - p_mmdet| / update"]
        print(f"| {name} | {dtype_name} | {'equal' if counts else 'DIFFERENT'} | {shared:.1e} / {own:.1e} | "
              f"{g[0]:.1e} / {g[2]:.1e} | {u[0]:.1e} / {u[2]:.1e} | "
              f"{same:.1e} | {'pass' if not bad else 'FAIL'} |")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
