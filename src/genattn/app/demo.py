"""``genattn demo``: the seed's study in miniature, on a CPU, with no download.

The seed's table is a trade-off: attention buys accuracy with time and memory. The demo shows both halves where
each can be shown honestly on a CPU in minutes:

* **cost at the seed's size**: the full ResNet-50 baseline, '0010' and '1111' models (random weights: the memory
  does not depend on them, the time only through how many boxes reach the post-processing) at an 800x1333
  input, and '1111' once more computed by the original algorithm (``impl='materialize'``): inference speed
  (median of 3 images at batch 1) and peak training memory (one step at batch 1, in a fresh process), measured
  the way ``genattn bench`` measures;
* **accuracy with its noise**: the baseline, '0010' and '1111' detectors (optionally the DCN variants too)
  trained from scratch with a short schedule on small images of the built-in shapes dataset
  (:mod:`genattn.data.synthetic`), each box AP with its 95% interval over resamples of the validation images,
  and whether each difference from the baseline exceeds that noise.

It writes both tables, a plot, a detection picture and an attention picture into a run directory. The whole run
is sized to :data:`TOTAL_BUDGET_S` on a 2-core CPU: the cost measurement comes first, and the training gets the
time that is left.

Without ImageNet weights (nothing is downloaded), the trained models use a narrow ResNet with one bottleneck per
stage and trainable BatchNorm, a slimmer FPN and box head, and a higher learning rate than the 1x recipe.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genattn.engine.recipes import TINY_BACKBONE, Recipe
from genattn.models import ModelConfig
from genattn.models.zoo import MODELS, study_models

if TYPE_CHECKING:
    from genattn.app.bench import BenchResult

__all__ = ["DEMO_MODELS", "DEMO_DCN_MODELS", "COST_MODELS", "demo_recipe", "cost_configs", "measure_cost",
           "run_demo"]

DEMO_MODELS = study_models()  # baseline, '0010', '1111'
DEMO_DCN_MODELS = study_models(dcn=True)  # '0010' + DCN, '1111' + DCN
#: The full-size models whose cost is measured: (name, attention path); None: the model's default path.
COST_MODELS = tuple((name, None) for name in DEMO_MODELS) + ((DEMO_MODELS[-1], "materialize"),)
#: The seed's input size (MMDetection's 1333x800 resize) for the cost measurement.
COST_INPUT = (800, 1333)
COST_IMAGES = 3  # timed images per model, after one untimed warm-up call

#: The whole default demo (three models) on a 2-core CPU, with a minute to spare within 15 minutes. The cost
#: measurement runs first; the three models' training then gets what is left, less :data:`RESERVE_S`.
TOTAL_BUDGET_S = 14 * 60
#: What runs after the budget is set, besides training: the evaluations, intervals and pictures.
RESERVE_S = 60
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


def _choose_threads() -> None:
    """One thread on a machine that is already busy (1-minute load average at or above its core count): there,
    several threads per process wait for each other and run many times slower."""
    import os

    import torch

    if torch.get_num_threads() > 1 and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load >= cores - 0.5:
            torch.set_num_threads(1)
            _say(f"the machine is busy (load {load:.1f} on {cores} cores): using one thread")


def _calibrate(recipe: Recipe, data, budget_s: float) -> int:
    """Iterations per model that fit the default models' training into ``budget_s`` seconds on this machine,
    sized by timing a few training steps of the slowest model ('1111')."""
    import torch

    from genattn.app.bench import training_step_time
    from genattn.data import CocoDetection
    from genattn.engine.build import dataset_classes

    _say(f"timing a few training steps of {recipe.name} to size the schedule to this machine ...")
    classes = dataset_classes(CocoDetection(data.val_images, data.val_ann, train=False))
    step = training_step_time(recipe.model_config(), classes, steps=3, warmup=1, batch_size=recipe.imgs_per_gpu,
                              input_size=(recipe.min_size, recipe.max_size), device="cpu")
    # '1111' is the slowest of the three; the others take about as long, so a third of the budget each.
    iters = int(max(budget_s, 0) / len(DEMO_MODELS) / step)
    clamped = min(max(iters, MIN_ITERS), MAX_ITERS)
    _say(f"{step:.2f} s per training step with {torch.get_num_threads()} thread(s), {budget_s / 60:.1f} min left "
         f"for training -> {clamped} iterations per model" + (f" (clamped from {iters})" if clamped != iters else ""))
    return clamped


def cost_configs(*, quick: bool = False) -> list[ModelConfig]:
    """The models of :data:`COST_MODELS`: full size, or (``quick``) the smoke run's tiny ones at 64 px."""
    configs = []
    for name, impl in COST_MODELS:
        config = ModelConfig.from_name(name)
        if quick:
            config = config.updated({"backbone": QUICK_BACKBONE, "heads": QUICK_HEADS, "min_size": 64,
                                     "max_size": 64})
        configs.append(config.with_impl(impl))
    return configs


def measure_cost(*, quick: bool = False, threads: int | None = None) -> list["BenchResult"]:
    """Inference speed and peak training memory of :func:`cost_configs` (see :mod:`genattn.app.bench`).

    Full size: one untimed warm-up and :data:`COST_IMAGES` timed random images of :data:`COST_INPUT` at batch 1
    per model, the models timed in turn image by image (:func:`~genattn.app.bench.interleaved_speed`: a drifting
    machine slows them alike), and one training step at batch 1 in a fresh process for the memory. ``quick``:
    2 timed 64 px images, no memory.
    """
    import torch

    from genattn.app import bench
    from genattn.app.report import cost_label
    from genattn.models import load_model

    if threads:
        torch.set_num_threads(threads)
    size, num_images = ((64, 64), 2) if quick else (COST_INPUT, COST_IMAGES)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, *size), generator=gen, dtype=torch.uint8) for _ in range(num_images)]
    configs = cost_configs(quick=quick)
    start = time.perf_counter()
    nets = [load_model(config)[0].eval() for config in configs]
    speeds = bench.interleaved_speed(nets, images, warmup=1)
    del nets
    _say(f"    inference timed in {time.perf_counter() - start:.0f} s (models in turn, image by image)")
    results = []
    cpu = torch.device("cpu")
    for config, speed in zip(configs, speeds):
        start = time.perf_counter()
        memory = ({"mem_gb": None, "mem_method": None} if quick else
                  bench.training_memory(config, device=cpu, steps=1, batch_size=1, input_size=size, threads=threads))
        result = bench.bench_result(config, cpu, speed, memory, warmup=1, input_size=size)
        mem = f", {result.mem_gb:.2f} GB in training (measured in {time.perf_counter() - start:.0f} s)" \
            if result.mem_gb is not None else ""
        _say(f"    {cost_label(result)}: {result.fps:.3g} fps ({result.median_ms / 1e3:.2f} s per image){mem}")
        results.append(result)
    return results


def run_demo(work_dir: str | Path | None = None, *, dcn: bool = False, iters: int | None = None,
             quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run the demo; prints progress, the tables, the comparisons and the run directory.

    Args:
        work_dir: run directory (default ``runs/demo-TIMESTAMP``).
        dcn: also train the DCN variants of '0010' and '1111'.
        iters: training iterations per model (default: sized so that the whole default demo takes about
            :data:`TOTAL_BUDGET_S` seconds on this machine, within :data:`MIN_ITERS`..:data:`MAX_ITERS`).
        quick: a smoke run for tests: a tiny dataset and model, 64 px images, 2 iterations; the cost of tiny
            64 px models (2 timed images, no memory measurement) in place of the full-size one.
        threads: CPU threads (default: torch's setting, or one if that is faster on this machine right now).

    Returns:
        ``{'rows', 'cost', 'files', 'work_dir', 'untrained_box_ap', 'detection_png', 'attention_png',
        'seconds'}``.
    """
    import torch

    from genattn.app import pictures, report, study
    from genattn.data.synthetic import ensure_shapes_dataset

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    elif not quick:
        _choose_threads()
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

    what = "tiny 64 px models (smoke run)" if quick else f"full-size models at {COST_INPUT[0]}x{COST_INPUT[1]}"
    _say(f"cost: inference speed and training memory of the {what}: baseline, 0010, 1111 and 1111 computed by "
         f"the original algorithm ...")
    cost_start = time.perf_counter()
    cost = measure_cost(quick=quick, threads=threads)
    cost_s = time.perf_counter() - cost_start
    _say(f"cost measured in {cost_s / 60:.1f} min")
    if iters is None and quick:
        iters = 2
    elif iters is None:
        budget = TOTAL_BUDGET_S - RESERVE_S - (time.perf_counter() - start)
        iters = _calibrate(demo_recipe(DEMO_MODELS[-1], image_size=image_size, num_train=num_train), data, budget)
    recipes = [demo_recipe(m, iters=iters, image_size=image_size, num_train=num_train,
                           batch_size=2 if quick else 8, quick=quick) for m in models]

    _say(f"[0/{len(models)}] evaluating the untrained baseline (the floor that training must beat)")
    untrained = study.evaluate_untrained(recipes[0], data.root)
    _say(f"untrained box AP: {100 * untrained:.1f}")
    rows = []
    for i, recipe in enumerate(recipes, 1):
        _say(f"[{i}/{len(models)}] {recipe.name}: {iters} iterations of {recipe.imgs_per_gpu} images at "
             f"{image_size} px, then evaluation")
        row = study.study_model(recipe, data.root, work_dir / recipe.name, bench_images=0, device="cpu")
        cells = report.table_cells(row)
        _say(f"    box AP {cells['box AP']} (95% interval {cells['95% CI']}; untrained {100 * untrained:.1f}), "
             f"trained in {row.train_s:.0f} s")
        rows.append(row)

    num_val = rows[0].metrics.get("num_images", 0)
    title = (f"Accuracy: {rows[0].backbone} models trained from scratch on the shapes dataset ({num_train} images, "
             f"{image_size} px, {iters} iterations each); box AP on {num_val} validation images with its 95% "
             f"interval over resamples of those images; untrained box AP {100 * untrained:.1f}")
    first = cost[0]
    if quick:
        cost_title = (f"Cost (smoke run: tiny {first.backbone} models at 64x64, not the seed's size), "
                      f"{first.device_name}")
    else:
        cost_title = (f"Cost at the seed's size: {first.backbone} models with random weights at a "
                      f"{first.input_size[0]}x{first.input_size[1]} input, {first.device_name}; fps: median of "
                      f"{first.num_images} images at batch 1; Mem: one training step at batch 1, "
                      f"{first.mem_method}")
    seed_ap = [MODELS[name].box_ap for name in DEMO_MODELS]  # baseline, '0010', '1111'
    notes = ["The AP intervals cover only which validation images were drawn, not training noise: in earlier "
             "runs of 310 to 491 iterations the same tiny models' APs moved by several points, in three different "
             "orders in four runs (README).",
             f"The seed's accuracy gains (box AP {seed_ap[1]} for '0010' and {seed_ap[2]} for '1111' against "
             f"{seed_ap[0]}) need COCO-scale training: 12 epochs of 118k images from ImageNet weights. The "
             f"released checkpoints reproduce them: genattn test {DEMO_MODELS[2]} --checkpoint URL --data "
             f"COCO_ROOT (README, Model zoo)."]
    files = report.write_table(rows, work_dir, title=title, cost=cost, cost_title=cost_title, notes=notes)

    det, point, heatmaps = _pictures(rows, data, work_dir, pictures)
    seconds = time.perf_counter() - start
    _say("")
    _say(files["markdown"].read_text().strip())
    _say("")
    _say(f"tables: {files['markdown']}, {files['csv']}, {files['cost_csv']}; plot: {files['plot']}")
    _say(f"detections: {det['images'][0]['png']}")
    _say(f"where pixel {point} attends, per head and term: {heatmaps[0]}; every block: {heatmaps[1]}")
    _say(f"finished in {seconds / 60:.1f} min (cost {cost_s / 60:.1f} min); run directory {work_dir.resolve()}")
    return {"rows": rows, "cost": cost, "files": files, "work_dir": work_dir, "untrained_box_ap": untrained,
            "detection_png": det["images"][0]["png"], "attention_png": heatmaps[0], "seconds": seconds}


def _pictures(rows, data, work_dir: Path, pictures):
    """Pictures of the last '1111' model: its detections, and where the centre of the largest object of the
    validation image with the most objects attends.

    Returns:
        ``(detections, point, attention pictures)``; the pictures are the first block's (the earliest stage: the
        finest key grid, where a person can see where the pixel attends), then the summary of all blocks.
    """
    from genattn.app.detect import detect_images
    from genattn.models import load_model

    show = next((r for r in reversed(rows) if r.attention == "1111"), rows[-1])
    model, _ = load_model(show.model, show.checkpoint)
    with open(data.val_ann) as f:
        val = json.load(f)
    image_id = max(val["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in val["annotations"]))["id"]
    image_file = data.val_images / next(im["file_name"] for im in val["images"] if im["id"] == image_id)
    det = detect_images(model, [image_file], work_dir / "detect", score_thr=0.3)
    ann = max((a for a in val["annotations"] if a["image_id"] == image_id), key=lambda a: a["bbox"][2] * a["bbox"][3])
    x, y, w, h = ann["bbox"]
    point = (int(x + w / 2), int(y + h / 2))
    files = pictures.attention_pictures(model, image_file, point, work_dir / "attention")
    return det, point, [files[1], files[0]]
