"""The seed's study: train, test and benchmark several models, then tabulate and plot them.

For every model, :func:`study_model` trains it with the training engine (:mod:`genattn.engine`), evaluates
COCO box AP on the validation split with a bootstrap interval over the validation images
(:mod:`genattn.engine.bootstrap`, from the training's own final evaluation), and measures inference speed and
peak training memory with :mod:`genattn.app.bench`; the result is a :class:`StudyRow`.
:mod:`genattn.app.report` writes the seed's table, the comparisons and a plot.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from genattn.data import CocoDetection, data_root
from genattn.data.transforms import load_image
from genattn.engine.build import dataset_classes, seed_everything
from genattn.engine.recipes import Recipe
from genattn.models import load_model

__all__ = ["StudyRow", "study_model", "run_study", "evaluate_untrained", "RESAMPLES"]

#: Bootstrap resamples of the validation images behind each AP interval (the same resamples for every model).
RESAMPLES = 1000


@dataclass(frozen=True)
class StudyRow:
    """One model of a study: what it is and what was measured (None: not measured).

    Attributes:
        model: the model name.
        backbone: the backbone's label ('R-50'; 'R-14 w16' for the narrow CPU backbone).
        attention: the attention type, or None.
        dcn: deformable convolution in stages 2-4.
        schedule: '1x', '<N> ep' or '<N> it'.
        box_ap: COCO box AP in [0, 1].
        box_ap_ci: its 95% interval over resamples of the validation images (percentile bootstrap), or None.
        ap_resamples: box AP of each resample of the validation images, the same resamples for every model
            of a study (so two models' differences are paired; :func:`genattn.engine.bootstrap.bootstrap_ap`).
        mem_gb, fps, median_ms: the benchmark's peak training memory, inference speed and median time.
        train_s: training wall time in seconds.
        device: the benchmark's device, named.
        checkpoint: the last checkpoint of the training run.
        metrics: the evaluation's metrics (without the per-class table).
    """

    model: str
    backbone: str
    attention: str | None
    dcn: bool
    schedule: str
    box_ap: float | None = None
    box_ap_ci: tuple[float, float] | None = None
    ap_resamples: tuple[float, ...] = field(default=(), repr=False)
    mem_gb: float | None = None
    fps: float | None = None
    median_ms: float | None = None
    train_s: float | None = None
    device: str | None = None
    checkpoint: str | None = None
    metrics: dict = field(default_factory=dict)

    @classmethod
    def describe(cls, recipe: Recipe) -> "StudyRow":
        """The descriptive part of a recipe's row."""
        if recipe.max_iters:
            schedule = f"{recipe.max_iters} it"
        elif recipe.epochs == 12 and tuple(recipe.lr_steps) == (8, 11):
            schedule = "1x"
        else:
            schedule = f"{recipe.epochs} ep"
        return cls(recipe.name, recipe.backbone.label, recipe.attention_type, recipe.dcn, schedule)

    @property
    def tag(self) -> str:
        """A short name for plots and summaries: 'baseline', '0010', '1111+DCN', 'DCN'."""
        if self.attention is None:
            return "DCN" if self.dcn else "baseline"
        return self.attention + ("+DCN" if self.dcn else "")


def _val_images(root: Path, recipe: Recipe, count: int) -> list[torch.Tensor]:
    """The first ``count`` validation images, for timing on real content."""
    with open(root / "annotations" / f"instances_{recipe.val_split}.json") as f:
        files = [im["file_name"] for im in sorted(json.load(f)["images"], key=lambda im: im["id"])][:count]
    return [load_image(root / recipe.val_split / name) for name in files]


def _val_set(recipe: Recipe, root: Path) -> CocoDetection:
    return CocoDetection(root / recipe.val_split, root / "annotations" / f"instances_{recipe.val_split}.json",
                         train=False)


def evaluate_untrained(recipe: Recipe, root: Path) -> float:
    """Box AP of the recipe's model straight after initialisation (the floor that training must beat)."""
    from genattn.engine.evaluate import evaluate

    dataset = _val_set(recipe, root)
    seed_everything(recipe.seed)  # the same initial weights the training run starts from
    model, _ = load_model(recipe, classes=dataset_classes(dataset), pretrained_backbone=recipe.pretrained_backbone)
    return float(evaluate(model.eval(), dataset, progress=True)["AP"])


def study_model(recipe: Recipe, root: Path, work_dir: Path, *, bench_images: int = 20,
                device: str | None = None, memory_steps: int = 3, progress: bool = True) -> StudyRow:
    """Train, test and benchmark one model.

    Args:
        recipe: the training recipe (model, image size, schedule); it must evaluate at the end
            (``eval_interval >= 0``).
        root: the COCO-layout data root.
        work_dir: this model's run directory.
        bench_images: timed validation images for the speed measurement (0 skips the benchmark: no speed, no
            memory).
        device: cpu or cuda for the benchmark (default: CUDA if available).
        memory_steps: training steps of the memory measurement (0 skips it).
        progress: progress bars.
    """
    from genattn.app import bench
    from genattn.engine.train import train

    start = time.perf_counter()
    result = train(recipe, data_root=root, work_dir=Path(work_dir), progress=progress)
    train_s = time.perf_counter() - start
    metrics = result.get("metrics") or {}
    if "AP" not in metrics:
        raise RuntimeError(f"training {recipe.name} produced no evaluation (is there a validation split?)")
    row = dataclasses.replace(
        StudyRow.describe(recipe), box_ap=float(metrics["AP"]), train_s=train_s, checkpoint=str(result["checkpoint"]),
        metrics={k: v for k, v in metrics.items() if k != "per_class"}, **ap_interval(recipe, root, metrics))
    if bench_images <= 0:
        return row
    measured = bench.benchmark(recipe.model_config(), checkpoint=result["checkpoint"], device=device,
                               num_images=bench_images, warmup=3, images=_val_images(root, recipe, bench_images),
                               memory_steps=memory_steps, batch_size=recipe.imgs_per_gpu, progress=progress)
    return dataclasses.replace(row, mem_gb=measured.mem_gb, fps=measured.fps, median_ms=measured.median_ms,
                               device=measured.device_name)


def ap_interval(recipe: Recipe, root: Path, metrics: Mapping[str, Any], *, samples: int = RESAMPLES,
                level: float = 0.95) -> dict[str, Any]:
    """The interval of an evaluation's box AP over resamples of the validation images.

    The evaluation's own detections file (``metrics['results_file']``) is matched to the ground truth once;
    every resample reuses those per-image results (:mod:`genattn.engine.bootstrap`). The resamples depend only on
    the number of images, so every model of a study gets the same ones.

    Returns:
        ``{'box_ap_ci': (low, high), 'ap_resamples': (...)}`` (AP in [0, 1]).

    Raises:
        RuntimeError: the detections file does not reproduce the evaluation's AP.
    """
    from genattn.engine.bootstrap import bootstrap_ap, box_ap, image_matches, percentile_interval

    dataset = _val_set(recipe, root)
    with open(metrics["results_file"]) as f:
        matches = image_matches(dataset.coco, json.load(f), img_ids=dataset.ids)
    if abs(box_ap(matches) - float(metrics["AP"])) > 1e-9:
        raise RuntimeError(f"{metrics['results_file']}: its box AP {box_ap(matches):.4f} is not the evaluation's "
                           f"{float(metrics['AP']):.4f}")
    resamples = bootstrap_ap(matches, samples=samples, seed=0)
    return {"box_ap_ci": percentile_interval(resamples, level), "ap_resamples": tuple(float(v) for v in resamples)}


def run_study(models: Sequence[str], *, data: str | Path, work_dir: str | Path | None = None,
              changes: Mapping[str, Any] | None = None, impl: str | None = None, tiny: bool = False,
              device: str | None = None, bench_images: int = 20, memory_steps: int = 3) -> dict[str, Any]:
    """``genattn study``: train, test and bench every model with the same recipe changes, then the table.

    Args:
        models: model names.
        data: COCO-layout data root, or 'shapes'.
        work_dir: run directory (default ``work_dirs/study-TIMESTAMP``); each model trains in a subfolder.
        changes: recipe changes for every model, a nested mapping (e.g. ``{'max_iters': 100, 'backbone':
            {'frozen_stages': -1}}``); see :meth:`genattn.engine.recipes.Recipe.replace`.
        impl: the attention path of every attention block of every model (see ``ModelConfig.with_impl``).
        tiny: start from :func:`genattn.engine.recipes.tiny_recipe` instead of the 1x recipe.
        device: cpu or cuda.
        bench_images: timed images per model.
        memory_steps: training steps of each memory measurement (0 skips it).

    Returns:
        ``{'rows', 'files', 'markdown', 'work_dir'}``.
    """
    from genattn.engine.recipes import get_recipe, tiny_recipe

    root = data_root(data)
    work_dir = Path(work_dir or f"work_dirs/study-{time.strftime('%Y%m%d-%H%M%S')}")
    recipes = [(tiny_recipe if tiny else get_recipe)(name).replace(**(changes or {})).with_impl(impl)
               for name in models]
    rows = [study_model(r, root, work_dir / r.name, bench_images=bench_images, device=device,
                        memory_steps=memory_steps) for r in recipes]
    from genattn.app.report import write_table

    files = write_table(rows, work_dir, title=f"genattn study on {root}")
    return {"rows": rows, "files": files, "markdown": files["markdown"].read_text(), "work_dir": work_dir}
