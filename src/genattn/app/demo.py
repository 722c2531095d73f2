"""``genattn demo``: the seed's study in miniature, on a CPU, with no download.

It generates the built-in shapes dataset (:mod:`genattn.data.synthetic`), trains the baseline (no attention),
'0010' and '1111' detectors from scratch with a short schedule on small images (optionally the DCN variants
too), evaluates their box AP, benchmarks their speed and training memory, and writes the seed's table, a
plot, a detection picture and an attention picture into a run directory. The whole run is sized to finish in
about 15 minutes on a 2-core CPU.

Without ImageNet weights (nothing is downloaded), the models use a narrow ResNet with one bottleneck per stage
and trainable BatchNorm, a slimmer FPN and box head, and a higher learning rate than the 1x recipe.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from genattn.engine.recipes import TINY_BACKBONE, Recipe
from genattn.models.zoo import study_models

__all__ = ["DEMO_MODELS", "DEMO_DCN_MODELS", "demo_recipe", "run_demo"]

DEMO_MODELS = study_models()  # baseline, '0010', '1111'
DEMO_DCN_MODELS = study_models(dcn=True)  # '0010' + DCN, '1111' + DCN

#: Training time of all the default demo's models together; the iterations per model are sized to it by
#: timing a few training steps of the slowest model ('1111') first.
TRAIN_BUDGET_S = 11 * 60
#: Bounds on the calibrated iterations per model (batch 8 of 128 px images).
MIN_ITERS, MAX_ITERS = 200, 1000
DEMO_ITERS = 500  # the recipe's default when no calibration is done
#: A ResNet small enough to train from scratch on a CPU in minutes (one bottleneck per stage, width 16).
DEMO_BACKBONE = TINY_BACKBONE
#: Slimmer heads (the defaults are sized for 80 COCO classes and 800 px images) and fewer proposals.
DEMO_HEADS = {"fpn_channels": 64, "representation_size": 256, "box_batch_size_per_image": 128,
                     "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
                     "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300}


#: The smoke run's (``--quick``) even smaller model.
QUICK_BACKBONE = {**DEMO_BACKBONE, "base_width": 8, "stem_width": 8}
QUICK_HEADS = {**DEMO_HEADS, "fpn_channels": 16, "representation_size": 32}


def demo_recipe(model: str, *, iters: int = DEMO_ITERS, image_size: int = 128, num_train: int = 480,
                batch_size: int = 8, quick: bool = False) -> Recipe:
    """The demo's recipe for one model: from scratch, small images, ``iters`` iterations, steps at 75%/92%."""
    epochs = max(1, math.ceil(iters * batch_size / num_train))
    backbone, heads = (QUICK_BACKBONE, QUICK_HEADS) if quick else (DEMO_BACKBONE, DEMO_HEADS)
    recipe = Recipe.from_name(model, min_size=image_size, max_size=image_size, imgs_per_gpu=batch_size, base_lr=0.04, base_batch_size=batch_size,
                  warmup_iters=min(100, max(1, iters // 5)), warmup_ratio=0.01, epochs=epochs,
                  # From scratch at a high learning rate a rare step explodes ('0010' once went to NaN at
                  # iteration 73 without these): clip the gradients, and skip a step whose loss is not finite.
                  grad_clip_norm=10.0, nonfinite_loss="skip",
                  lr_steps=(int(iters * 0.75), int(iters * 0.92)), lr_steps_unit="iter", max_iters=iters,
                  workers=0, eval_interval=0, checkpoint_interval=epochs + 1, log_interval=25, device="cpu")
    return recipe.replace(backbone=backbone, heads=heads)


def _say(text: str) -> None:
    print(text, flush=True)


def _calibrate(recipe: Recipe, data, *, choose_threads: bool) -> int:
    """Iterations per model that fit the default models' training into :data:`TRAIN_BUDGET_S` on this machine.

    With ``choose_threads``, a machine that is already busy (1-minute load average at or above its core count)
    gets one thread: there, several threads per process wait for each other and run many times slower.
    """
    import os

    import torch

    from genattn.app.bench import training_step_time
    from genattn.data import CocoDetection
    from genattn.engine.build import dataset_classes

    if choose_threads and torch.get_num_threads() > 1 and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load >= cores - 0.5:
            torch.set_num_threads(1)
            _say(f"the machine is busy (load {load:.1f} on {cores} cores): using one thread")
    _say(f"timing a few training steps of {recipe.name} to size the schedule to this machine ...")
    classes = dataset_classes(CocoDetection(data.val_images, data.val_ann, train=False))
    step = training_step_time(recipe.model_config(), classes, steps=3, warmup=1, batch_size=recipe.imgs_per_gpu,
                              input_size=(recipe.min_size, recipe.max_size), device="cpu")
    # '1111' is the slowest of the three; the others take about as long, so a third of the budget each.
    iters = int(TRAIN_BUDGET_S / len(DEMO_MODELS) / step)
    clamped = min(max(iters, MIN_ITERS), MAX_ITERS)
    _say(f"{step:.2f} s per training step with {torch.get_num_threads()} thread(s) -> {clamped} iterations per "
         f"model" + (f" (clamped from {iters})" if clamped != iters else ""))
    return clamped


def run_demo(work_dir: str | Path | None = None, *, dcn: bool = False, iters: int | None = None,
             quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run the demo; prints progress, the table and the run directory.

    Args:
        work_dir: run directory (default ``runs/demo-TIMESTAMP``).
        dcn: also train the DCN variants of '0010' and '1111'.
        iters: training iterations per model (default: sized so that the three default models train in about
            :data:`TRAIN_BUDGET_S` seconds on this machine, within :data:`MIN_ITERS`..:data:`MAX_ITERS`).
        quick: a smoke run for tests: a tiny dataset and model, 64 px images, 2 iterations, 2 timed images, no
            memory measurement.
        threads: CPU threads (default: torch's setting, or one if that is faster on this machine right now).

    Returns:
        ``{'rows', 'files', 'work_dir', 'untrained_box_ap', 'detection_png', 'attention_png', 'seconds'}``.
    """
    import torch

    from genattn.app import pictures, study
    from genattn.data.synthetic import ensure_shapes_dataset
    from genattn.models import load_model

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    work_dir = Path(work_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    work_dir.mkdir(parents=True, exist_ok=True)
    _say(f"genattn demo: run directory {work_dir.resolve()}")
    size = dict(num_train=8, num_val=4, image_size=64) if quick else {}
    data = ensure_shapes_dataset(**size)
    with open(data.train_ann) as f:
        num_train = len(json.load(f)["images"])
    _say(f"dataset: {data.root} ({num_train} training images)")
    models = DEMO_MODELS + (DEMO_DCN_MODELS if dcn else ())
    image_size = 64 if quick else 128
    if iters is None and quick:
        iters = 2
    elif iters is None:
        iters = _calibrate(demo_recipe(DEMO_MODELS[-1], image_size=image_size, num_train=num_train), data,
                           choose_threads=threads is None)
    recipes = [demo_recipe(m, iters=iters, image_size=image_size, num_train=num_train,
                           batch_size=2 if quick else 8, quick=quick) for m in models]
    bench_images = 2 if quick else 20

    _say(f"[0/{len(models)}] evaluating the untrained baseline (the floor that training must beat)")
    untrained = study.evaluate_untrained(recipes[0], data.root)
    _say(f"untrained box AP: {100 * untrained:.1f}")
    rows = []
    for i, recipe in enumerate(recipes, 1):
        _say(f"[{i}/{len(models)}] {recipe.name}: {iters} iterations of {recipe.imgs_per_gpu} images at "
             f"{image_size} px, then evaluation and benchmark")
        row = study.study_model(recipe, data.root, work_dir / recipe.name, bench_images=bench_images,
                                device="cpu", memory_steps=0 if quick else 2)
        cells = study.table_cells(row)
        _say(f"    box AP {cells['box AP']} (untrained {100 * untrained:.1f}), {cells['Inf time (fps)']} fps, "
             f"{cells['Mem (GB)']} GB, trained in {row.train_s:.0f} s")
        rows.append(row)
    files = study.write_table(rows, work_dir, title=f"genattn demo: {num_train} shapes images, {image_size} px, "
                              f"{iters} iterations per model, {rows[0].device}; untrained box AP "
                              f"{100 * untrained:.1f}")

    # Pictures of the last attention model: its detections and where one object's centre attends.
    show = next((r for r in reversed(rows) if r.attention == "1111"), rows[-1])
    model, _ = load_model(show.model, show.checkpoint)
    with open(data.val_ann) as f:
        val = json.load(f)
    image_id = max(val["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in val["annotations"]))["id"]
    image_file = data.val_images / next(im["file_name"] for im in val["images"] if im["id"] == image_id)
    det = pictures.detect_images(model, [image_file], work_dir / "detect", score_thr=0.3)
    ann = next(a for a in val["annotations"] if a["image_id"] == image_id)
    x, y, w, h = ann["bbox"]
    point = (int(x + w / 2), int(y + h / 2))
    heatmaps = pictures.attention_pictures(model, image_file, point, work_dir / "attention")
    seconds = time.perf_counter() - start
    _say("")
    _say(files["markdown"].read_text().strip())
    _say("")
    _say(f"untrained box AP {100 * untrained:.1f} -> trained: "
         + ", ".join(f"{r.tag} {study.table_cells(r)['box AP']}" for r in rows))
    _say(f"table: {files['markdown']}, {files['csv']}; plot: {files['plot']}")
    _say(f"detections: {det['images'][0]['png']}; attention of pixel {point}: {heatmaps[0]}")
    _say(f"finished in {seconds / 60:.1f} min; run directory {work_dir.resolve()}")
    return {"rows": rows, "files": files, "work_dir": work_dir, "untrained_box_ap": untrained,
            "detection_png": det["images"][0]["png"], "attention_png": heatmaps[0], "seconds": seconds}
