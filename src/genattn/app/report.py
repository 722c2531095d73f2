"""The study's report: accuracy with its uncertainty, cost, and what the differences mean.

Two tables, kept apart so that a reader sees where each number comes from:

* **accuracy** — the trained models (:class:`~genattn.app.study.StudyRow`): the seed's columns (Backbone,
  Attention Component, DCN, Lr schd, Mem (GB), Inf time (fps), box AP) plus the 95% bootstrap interval of box AP
  over the validation images; Mem and fps appear where they were measured on these models;
* **cost** — models benchmarked apart from the training (:class:`~genattn.app.bench.BenchResult`; the demo's
  full-size seed models), each with which algorithm computed its attention and its time and memory relative to
  the model without attention.

Under the accuracy table, every model's AP is compared with the model without attention: the difference and its
paired bootstrap interval (:mod:`genattn.engine.bootstrap`) say whether it exceeds the noise of the validation
set. :func:`write_table` writes both as Markdown (``results.md``), CSV (``results.csv``, ``cost.csv``) and JSON
(``results.json``), and plots them (``results.png``): box AP with its interval, fps and memory, every axis from
zero.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Sequence

from genattn.app.bench import BenchResult
from genattn.app.study import StudyRow
from genattn.engine.bootstrap import difference_interval
from genattn.models import ModelConfig
from genattn.models.zoo import MODELS

__all__ = ["COLUMNS", "COST_COLUMNS", "table_cells", "cost_cells", "differences", "cost_summary", "report_markdown",
           "write_table", "results_figure"]

COLUMNS = ("Backbone", "Attention Component", "DCN", "Lr schd", "Mem (GB)", "Inf time (fps)", "box AP", "95% CI")
#: Accuracy-table columns left out when no row has them (the demo does not benchmark its tiny models).
_OPTIONAL = ("Mem (GB)", "Inf time (fps)")
COST_COLUMNS = ("Backbone", "Attention Component", "Attention computed by", "Input", "Mem (GB)", "Inf time (fps)",
                "Mem / baseline", "Time / baseline")


def _number(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None or value != value else f"{scale * value:.{digits}f}"


def table_cells(row: StudyRow) -> dict[str, str]:
    """The accuracy table's cells of a row (AP and its interval in points)."""
    low, high = row.box_ap_ci or (None, None)
    return {"Backbone": row.backbone, "Attention Component": row.attention or "-", "DCN": "Y" if row.dcn else "N",
            "Lr schd": row.schedule, "Mem (GB)": _number(row.mem_gb, 3), "Inf time (fps)": _number(row.fps, 1),
            "box AP": _number(row.box_ap, 1, 100),
            "95% CI": "-" if low is None else f"{_number(low, 1, 100)}-{_number(high, 1, 100)}"}


def _attention(result: BenchResult) -> str | None:
    return ModelConfig.from_name(result.model).attention_type


def cost_label(result: BenchResult) -> str:
    """A short name: 'baseline', '0010', '1111', '1111 original' (computed by the original algorithm)."""
    attention = _attention(result)
    if attention is None:
        return "baseline"
    return attention + (" original" if result.impl == "materialize" else "")


def _baseline(cost: Sequence[BenchResult]) -> BenchResult | None:
    return next((r for r in cost if _attention(r) is None), None)


def cost_cells(result: BenchResult, baseline: BenchResult | None = None) -> dict[str, str]:
    """The cost table's cells of a benchmark; the ratios need the model without attention (``baseline``)."""
    attention = _attention(result)
    if attention is None:
        computed = "-"
    else:
        computed = "original algorithm (materialize)" if result.impl == "materialize" else f"genattn ({result.impl})"
    ratio = {"Mem / baseline": "-", "Time / baseline": "-"}
    if baseline is not None:
        if result.mem_gb and baseline.mem_gb:
            ratio["Mem / baseline"] = f"{result.mem_gb / baseline.mem_gb:.2f}x"
        ratio["Time / baseline"] = f"{result.median_ms / baseline.median_ms:.2f}x"
    return {"Backbone": result.backbone, "Attention Component": attention or "-", "Attention computed by": computed,
            "Input": f"{result.input_size[0]}x{result.input_size[1]}", "Mem (GB)": _number(result.mem_gb, 2),
            "Inf time (fps)": f"{result.fps:.3g}", **ratio}


def differences(rows: Sequence[StudyRow], level: float = 0.95) -> list[dict]:
    """Each model's box AP minus the model without attention's, with the paired bootstrap interval.

    Returns:
        Per compared row: ``{'model', 'against', 'difference', 'low', 'high', 'exceeds_noise'}`` (AP in [0, 1];
        ``exceeds_noise``: the interval leaves out zero). Empty without a row without attention or resamples.
    """
    base = next((r for r in rows if r.attention is None and not r.dcn), None)
    if base is None or not base.ap_resamples or base.box_ap is None:
        return []
    out = []
    for row in rows:
        if row is base or not row.ap_resamples or row.box_ap is None:
            continue
        low, high = difference_interval(row.ap_resamples, base.ap_resamples, level)
        out.append({"model": row.tag, "against": base.tag, "difference": row.box_ap - base.box_ap, "low": low,
                    "high": high, "exceeds_noise": bool(low > 0 or high < 0)})
    return out


def _difference_line(d: dict, num_images: int | None) -> str:
    images = f"the {num_images} validation images" if num_images else "the validation images"
    verdict = ("exceeds the noise of " + images if d["exceeds_noise"] else "within the noise of " + images)
    return (f"- {d['model']} vs {d['against']}: {_points(d['difference'])} AP (95% interval "
            f"{_points(d['low'])} to {_points(d['high'])}): {verdict}")


def _points(value: float) -> str:
    """AP in [0, 1] as signed points, without a '-0.0'."""
    return f"{round(100 * value, 1) + 0.0:+.1f}"


def cost_summary(cost: Sequence[BenchResult]) -> list[str]:
    """Time and memory of each attention model relative to the baseline, then the seed's table's ratios."""
    base = _baseline(cost)
    if base is None:
        return []
    lines = []
    for r in cost:
        if r is base:
            continue
        mem = f" and {r.mem_gb / base.mem_gb:.2f}x its training memory" if r.mem_gb and base.mem_gb else ""
        how = "the original algorithm" if r.impl == "materialize" else f"genattn ({r.impl})"
        lines.append(f"- {_attention(r)} computed by {how}: {r.median_ms / base.median_ms:.2f}x the baseline's "
                     f"time{mem}")
    seed_base, seeds = MODELS.get(base.model), []
    for name in dict.fromkeys(r.model for r in cost if r is not base):
        seed = MODELS.get(name)
        if seed_base and seed_base.fps and seed_base.mem_gb and seed and seed.fps and seed.mem_gb:
            seeds.append(f"{seed.attention_type} {seed_base.fps / seed.fps:.2f}x the time and "
                         f"{seed.mem_gb / seed_base.mem_gb:.2f}x the memory")
    if seeds:
        lines.append("- the seed's table (MMDetection's original algorithm on a V100 GPU): " + ", ".join(seeds))
    return lines


def report_markdown(rows: Sequence[StudyRow], cost: Sequence[BenchResult] = (), *, title: str = "",
                    cost_title: str = "", notes: Sequence[str] = ()) -> str:
    """Both tables, the comparisons and ``notes`` as Markdown."""
    cells = [table_cells(r) for r in rows]
    columns = [c for c in COLUMNS if c not in _OPTIONAL or any(x[c] != "-" for x in cells)]
    parts = [title] if title else []
    parts.append(_markdown_table(columns, cells))
    diffs = differences(rows)
    if diffs:
        num_images = rows[0].metrics.get("num_images")
        parts.append("\n".join(_difference_line(d, num_images) for d in diffs))
    if cost:
        base = _baseline(cost)
        parts += [cost_title] if cost_title else []
        parts.append(_markdown_table(COST_COLUMNS, [cost_cells(r, base) for r in cost]))
        summary = cost_summary(cost)
        if summary:
            parts.append("\n".join(summary))
    parts += [n for n in notes if n]
    return "\n\n".join(parts) + "\n"


def _markdown_table(columns: Sequence[str], cells: Sequence[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(":---:" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c[k] for k in columns) + " |" for c in cells])


def _write_csv(path: Path, columns: Sequence[str], names: Sequence[str], cells: Sequence[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Model", *columns])
        writer.writerows([[name, *(c[k] for k in columns)] for name, c in zip(names, cells)])


def write_table(rows: Sequence[StudyRow], out_dir: Path, *, title: str = "", cost: Sequence[BenchResult] = (),
                cost_title: str = "", notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json``, ``results.png`` and, with ``cost``, ``cost.csv``.

    Returns:
        The paths: ``{'markdown', 'csv', 'json', 'plot'}`` and ``'cost_csv'`` with ``cost``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "plot": out_dir / "results.png"}
    paths["markdown"].write_text(report_markdown(rows, cost, title=title, cost_title=cost_title, notes=notes))
    _write_csv(paths["csv"], COLUMNS, [r.model for r in rows], [table_cells(r) for r in rows])
    if cost:
        paths["cost_csv"] = out_dir / "cost.csv"
        base = _baseline(cost)
        _write_csv(paths["cost_csv"], COST_COLUMNS, [r.model for r in cost], [cost_cells(r, base) for r in cost])
    report = {"title": title, "accuracy": [dataclasses.asdict(r) for r in rows], "differences": differences(rows),
              "cost_title": cost_title, "cost": [r.to_dict() for r in cost], "notes": list(notes)}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    figure = results_figure(rows, cost, title=title, cost_title=cost_title)
    figure.savefig(paths["plot"], dpi=110)
    _close(figure)
    return paths


def _close(figure) -> None:
    from matplotlib import pyplot as plt

    plt.close(figure)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def results_figure(rows: Sequence[StudyRow], cost: Sequence[BenchResult] = (), *, title: str = "",
                   cost_title: str = ""):
    """The report's plot: box AP with its 95% interval per model; beside it fps and training memory as bars.

    The cost panels show ``cost`` when given, else the rows' own fps and memory where measured; each part is
    headed by its table's title, so that the plot says where its numbers come from. Every value axis starts at
    zero and ends a little above the largest value or interval bound, so that differences look as large as
    they are. Returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if cost:
        bars = [(cost_label(r), r.fps, r.mem_gb) for r in cost]
    else:
        bars = [(r.tag, r.fps, r.mem_gb) for r in rows if r.fps is not None or r.mem_gb is not None]
    fig = plt.figure(figsize=(4.6 + 8.4 * bool(bars), 4.8), layout="constrained")
    parts = fig.subfigures(1, 2, width_ratios=[4.6, 8.4], wspace=0.04) if bars else [fig]
    ax = parts[0].subplots()
    shown = [(i, r) for i, r in enumerate(rows) if r.box_ap is not None]
    ys = [100 * r.box_ap for _, r in shown]
    lows = [100 * (r.box_ap_ci or (r.box_ap, r.box_ap))[0] for _, r in shown]
    highs = [100 * (r.box_ap_ci or (r.box_ap, r.box_ap))[1] for _, r in shown]
    if shown:
        ax.errorbar([i for i, _ in shown], ys, yerr=[[y - lo for y, lo in zip(ys, lows)],
                                                       [hi - y for y, hi in zip(ys, highs)]],
                    fmt="o", capsize=5, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r.tag for r in rows])
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylim(0, 1.15 * max([*highs, *ys, 1.0]))
    ax.set_ylabel("box AP (bars: 95% interval)")
    ax.grid(axis="y", alpha=0.3)
    parts[0].suptitle(_wrap(title or "accuracy of the trained models", 62), fontsize=8)
    if bars:
        for ax, index, label in zip(parts[1].subplots(1, 2), (1, 2),
                                    ("inference speed (fps, batch 1)", "peak training memory (GB)")):
            values = [b[index] if b[index] is not None and b[index] == b[index] else None for b in bars]
            ax.bar(range(len(bars)), [v or 0.0 for v in values],
                   color=["tab:red" if b[0].endswith("original") else "tab:gray" for b in bars])
            ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=15)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
            if any(v is not None for v in values):
                ax.set_ylim(0, 1.15 * max(v for v in values if v is not None))
            else:
                ax.set_ylim(0, 1)
                ax.set_yticks([])
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        parts[1].suptitle(_wrap(cost_title or "cost of the trained models", 120), fontsize=8)
    return fig
