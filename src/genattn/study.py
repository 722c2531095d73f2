"""The seed's study: train, test and benchmark several models, then tabulate and plot them.

For every model, :func:`study_model` trains it with the training engine (:mod:`genattn.engine`), evaluates
COCO box AP on the validation split, and measures inference speed and peak training memory with
:mod:`genattn.benchmark`; :func:`write_table` writes the seed's table (Backbone, Attention Component, DCN,
Lr schd, Mem (GB), Inf time (fps), box AP) as Markdown and CSV, and a PNG plotting box AP against fps and
against memory.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from genattn.recipes import Recipe

__all__ = ["COLUMNS", "data_root", "describe", "study_model", "write_table", "run_study"]

COLUMNS = ("Backbone", "Attention Component", "DCN", "Lr schd", "Mem (GB)", "Inf time (fps)", "box AP")


def data_root(root: str | Path) -> Path:
    """A COCO-layout data root; ``'shapes'`` means the built-in dataset (generated on first use).

    Raises:
        FileNotFoundError: the directory does not exist.
    """
    if str(root) == "shapes":
        from genattn.data.synthetic import ensure_shapes_dataset

        return ensure_shapes_dataset().root
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    return Path(root)


def describe(recipe: Recipe) -> dict[str, str]:
    """The seed's table's descriptive columns for a recipe."""
    bb = dict(recipe.backbone)
    layers = tuple(bb.get("layers", (3, 4, 6, 3)))
    width = bb.get("base_width", 64)
    depth = {(3, 4, 6, 3): "R-50", (3, 4, 23, 3): "R-101"}.get(layers)
    if depth is None or width != 64:
        depth = f"R{''.join(map(str, layers))}-w{width}"
    name = recipe.model
    match = re.search(r"attention_([01]{4})", name)
    if recipe.max_iters:
        schedule = f"{recipe.max_iters} it"
    elif recipe.epochs == 12 and tuple(recipe.lr_steps) == (8, 11):
        schedule = "1x"
    else:
        schedule = f"{recipe.epochs} ep"
    return {"Backbone": depth, "Attention Component": match.group(1) if match else "-",
            "DCN": "Y" if ("dcn" in name or "dconv" in name) else "N", "Lr schd": schedule}


def _split_files(root: Path, recipe: Recipe, split: str) -> tuple[Path, Path]:
    return root / split, root / "annotations" / f"instances_{split}.json"


def _class_info(ann_file: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Category ids and names of an annotation file, in id order."""
    with open(ann_file) as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    return tuple(c["id"] for c in cats), tuple(c["name"] for c in cats)


def _val_images(root: Path, recipe: Recipe, count: int) -> list[torch.Tensor]:
    """The first ``count`` validation images, for timing on real content."""
    from genattn.viz import load_image

    images, ann = _split_files(root, recipe, recipe.val_split)
    with open(ann) as f:
        files = [im["file_name"] for im in sorted(json.load(f)["images"], key=lambda im: im["id"])][:count]
    return [load_image(images / name)[1] for name in files]


def evaluate_untrained(recipe: Recipe, root: Path) -> float:
    """Box AP of the recipe's model straight after initialisation (the floor that training must beat)."""
    from genattn.data import CocoDetection
    from genattn.engine.build import build_model, seed_everything
    from genattn.engine.evaluate import evaluate

    images, ann = _split_files(root, recipe, recipe.val_split)
    dataset = CocoDetection(images, ann, train=False)
    seed_everything(recipe.seed)  # the same initial weights the training run starts from
    model = build_model(recipe, category_ids=dataset.category_ids, class_names=dataset.class_names)
    return float(evaluate(model.eval(), dataset, progress=True)["AP"])


def study_model(recipe: Recipe, root: Path, work_dir: Path, *, bench_images: int = 20,
                device: str | None = None, memory_steps: int = 3, progress: bool = True) -> dict[str, Any]:
    """Train, test and benchmark one model; returns one row of the table plus details.

    Args:
        recipe: the training recipe (model name, backbone, image size, schedule); it must evaluate at the end
            (``eval_interval >= 0``).
        root: the COCO-layout data root.
        work_dir: this model's run directory.
        bench_images: timed validation images for the speed measurement.
        device: cpu or cuda for the benchmark (default: CUDA if available).
        memory_steps: training steps of the memory measurement (0 skips it).
        progress: progress bars.
    """
    from genattn import benchmark
    from genattn.engine.train import train
    from genattn.inference import load_model

    work_dir = Path(work_dir)
    row: dict[str, Any] = {"model": recipe.model, **describe(recipe)}
    start = time.perf_counter()
    result = train(recipe, data_root=root, work_dir=work_dir, progress=progress)
    row["train_s"] = time.perf_counter() - start
    if not result.get("metrics"):
        raise RuntimeError(f"training {recipe.model} produced no evaluation (is there a validation split?)")
    row["box_ap"] = float(result["metrics"]["AP"])
    model, spec = load_model(recipe.model, checkpoint=result["checkpoint"], device=device)
    images = _val_images(root, recipe, bench_images)
    bench = benchmark.benchmark(spec, model=model, device=device, num_images=bench_images, warmup=3,
                                images=images, memory_steps=memory_steps, batch_size=recipe.imgs_per_gpu,
                                progress=progress)
    row.update({"mem_gb": bench["mem_gb"], "fps": bench["fps"], "median_ms": bench["median_ms"],
                "device": bench["device_name"], "checkpoint": str(result["checkpoint"]),
                "metrics": {k: v for k, v in result["metrics"].items() if k != "per_class"}})
    row.update({"Mem (GB)": _fmt(bench["mem_gb"], 3), "Inf time (fps)": _fmt(bench["fps"], 1),
                "box AP": _fmt(100 * row["box_ap"], 1)})
    return row


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def write_table(rows: Sequence[dict[str, Any]], out_dir: Path, *, title: str = "") -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``results.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(":---:" for _ in COLUMNS) + "|"]
    md += ["| " + " | ".join(str(r.get(c, "-")) for c in COLUMNS) + " |" for r in rows]
    text = (f"{title}\n\n" if title else "") + "\n".join(md) + "\n"
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "plot": out_dir / "results.png"}
    paths["markdown"].write_text(text)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Model", *COLUMNS])
        writer.writerows([[r["model"], *(r.get(c, "-") for c in COLUMNS)] for r in rows])
    paths["json"].write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=2, default=str) + "\n")
    _plot(rows, paths["plot"], title)
    return paths


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, label in ((axes[0], "fps", "inference speed (fps, batch 1)"),
                           (axes[1], "mem_gb", "peak training memory (GB)")):
        shown = 0
        for r in rows:
            x, y = r.get(key), r.get("box_ap")
            if x is None or y is None or x != x:
                continue
            shown += 1
            tag = r["Attention Component"] + ("+DCN" if r["DCN"] == "Y" else "")
            tag = "baseline" if tag == "-" else ("DCN" if tag == "-+DCN" else tag)
            ax.scatter([x], [100 * y], s=40)
            ax.annotate(tag, (x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=9)
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
              recipe_changes: dict[str, Any] | None = None, overrides: Sequence[str] = (), tiny: bool = False,
              device: str | None = None, bench_images: int = 20, memory_steps: int = 3) -> dict[str, Any]:
    """``genattn study``: train, test and bench every model with the same recipe changes, then the table.

    Args:
        models: model names.
        data: COCO-layout data root, or 'shapes'.
        work_dir: run directory (default ``work_dirs/study-TIMESTAMP``); each model trains in a subfolder.
        recipe_changes: recipe fields to change for every model (e.g. ``{'max_iters': 100}``).
        overrides: recipe ``key=value`` strings (see :meth:`genattn.recipes.Recipe.replace`).
        tiny: start from :func:`genattn.recipes.tiny_recipe` instead of the 1x recipe.
        device: cpu or cuda.
        bench_images: timed images per model.
        memory_steps: training steps of each memory measurement (0 skips it).

    Returns:
        ``{'rows', 'files', 'markdown', 'work_dir'}``.
    """
    from genattn.recipes import get_recipe, tiny_recipe

    root = data_root(data)
    work_dir = Path(work_dir or f"work_dirs/study-{time.strftime('%Y%m%d-%H%M%S')}")
    recipes = [(tiny_recipe if tiny else get_recipe)(name, *overrides).replace(**(recipe_changes or {}))
               for name in models]
    rows = [study_model(r, root, work_dir / r.model, bench_images=bench_images, device=device,
                        memory_steps=memory_steps) for r in recipes]
    files = write_table(rows, work_dir, title=f"genattn study on {root}")
    return {"rows": rows, "files": files, "markdown": files["markdown"].read_text(), "work_dir": work_dir}
