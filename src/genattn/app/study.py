"""The seed's study: train, test and benchmark several models, then tabulate and plot them.

For every model, :func:`study_model` trains it with the training engine (:mod:`genattn.engine`), evaluates
COCO box AP on the validation split, and measures inference speed and peak training memory with
:mod:`genattn.app.bench`; the result is a :class:`StudyRow`. :func:`write_table` writes the seed's table
(Backbone, Attention Component, DCN, Lr schd, Mem (GB), Inf time (fps), box AP) as Markdown and CSV, the rows as
JSON, and a PNG plotting box AP against fps and against memory.
"""

from __future__ import annotations

import csv
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

__all__ = ["COLUMNS", "StudyRow", "study_model", "write_table", "run_study", "evaluate_untrained"]

COLUMNS = ("Backbone", "Attention Component", "DCN", "Lr schd", "Mem (GB)", "Inf time (fps)", "box AP")


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


def _number(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None or value != value else f"{scale * value:.{digits}f}"


def table_cells(row: StudyRow) -> dict[str, str]:
    """The seed's table's cells of a row."""
    return {"Backbone": row.backbone, "Attention Component": row.attention or "-", "DCN": "Y" if row.dcn else "N",
            "Lr schd": row.schedule, "Mem (GB)": _number(row.mem_gb, 3), "Inf time (fps)": _number(row.fps, 1),
            "box AP": _number(row.box_ap, 1, 100)}


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
        bench_images: timed validation images for the speed measurement.
        device: cpu or cuda for the benchmark (default: CUDA if available).
        memory_steps: training steps of the memory measurement (0 skips it).
        progress: progress bars.
    """
    from genattn.app import bench
    from genattn.engine.train import train

    start = time.perf_counter()
    result = train(recipe, data_root=root, work_dir=Path(work_dir), progress=progress)
    train_s = time.perf_counter() - start
    if not result.get("metrics"):
        raise RuntimeError(f"training {recipe.name} produced no evaluation (is there a validation split?)")
    measured = bench.benchmark(recipe.model_config(), checkpoint=result["checkpoint"], device=device,
                               num_images=bench_images, warmup=3, images=_val_images(root, recipe, bench_images),
                               memory_steps=memory_steps, batch_size=recipe.imgs_per_gpu, progress=progress)
    return dataclasses.replace(
        StudyRow.describe(recipe), box_ap=float(result["metrics"]["AP"]), mem_gb=measured.mem_gb, fps=measured.fps,
        median_ms=measured.median_ms, train_s=train_s, device=measured.device_name,
        checkpoint=str(result["checkpoint"]),
        metrics={k: v for k, v in result["metrics"].items() if k != "per_class"})


def write_table(rows: Sequence[StudyRow], out_dir: Path, *, title: str = "") -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``results.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [table_cells(r) for r in rows]
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(":---:" for _ in COLUMNS) + "|"]
    md += ["| " + " | ".join(c[k] for k in COLUMNS) + " |" for c in cells]
    text = (f"{title}\n\n" if title else "") + "\n".join(md) + "\n"
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "plot": out_dir / "results.png"}
    paths["markdown"].write_text(text)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Model", *COLUMNS])
        writer.writerows([[r.model, *(c[k] for k in COLUMNS)] for r, c in zip(rows, cells)])
    paths["json"].write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=str) + "\n")
    _plot(rows, paths["plot"], title)
    return paths


def _plot(rows: Sequence[StudyRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, label in ((axes[0], "fps", "inference speed (fps, batch 1)"),
                           (axes[1], "mem_gb", "peak training memory (GB)")):
        shown = 0
        for r in rows:
            x, y = getattr(r, key), r.box_ap
            if x is None or y is None or x != x:
                continue
            shown += 1
            ax.scatter([x], [100 * y], s=40)
            ax.annotate(r.tag, (x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("box AP")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    files = write_table(rows, work_dir, title=f"genattn study on {root}")
    return {"rows": rows, "files": files, "markdown": files["markdown"].read_text(), "work_dir": work_dir}
