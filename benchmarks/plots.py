"""PNG plots of a run: throughput against workers, and latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .report import Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def throughput_vs_workers(rows: Sequence[Row], path: Path, workloads: Sequence[str]) -> None:
    """samples/s per worker count: a row of panels per workload (saturation, drain), a column per model.

    Systems without a worker count are flat lines (direct dashed, black).
    """
    plt = _pyplot()
    models = list(dict.fromkeys(row.model for row in rows))
    shown = [w for w in ("saturation", "drain") if w in workloads]
    fig, axes = plt.subplots(len(shown), len(models), figsize=(6 * len(models), 4.5 * len(shown)), squeeze=False)
    names = list(dict.fromkeys(row.system.name for row in rows))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    colours["direct"] = "black"
    for r, workload in enumerate(shown):
        for ax, model in zip(axes[r], models):
            mine = [row for row in rows if row.model == model]
            for name in dict.fromkeys(row.system.name for row in mine):
                _plot_system(ax, [row for row in mine if row.system.name == name], workload, colours[name])
            ax.set_xticks(sorted({row.workers for row in mine if row.system.scalable}) or [1])
            ax.set_xlabel("workers")
            ax.set_ylabel(f"samples/s ({workload})")
            ax.set_yscale("log")
            ax.set_title(f"{model}: {workload}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_system(ax, series: list[Row], workload: str, colour: str) -> None:
    """One system's medians with min–max bars, or a flat line when it has no worker count."""
    series.sort(key=lambda row: row.workers)
    spreads = [row.spread(workload, "throughput") for row in series]
    if all(math.isnan(s.median) for s in spreads):
        return
    label = series[0].system.label
    if not series[0].system.scalable:
        ax.axhline(
            spreads[0].median, linestyle="--" if colour == "black" else ":", linewidth=1.4, label=label, color=colour
        )
        return
    ax.errorbar(
        [row.workers for row in series],
        [s.median for s in spreads],
        yerr=[[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]],
        marker="o",
        capsize=3,
        label=label,
        color=colour,
    )


def latency_percentiles(rows: Sequence[Row], path: Path) -> None:
    """p50 and p99 under light load and saturation per system, one panel per model, log scale."""
    plt = _pyplot()
    models = list(dict.fromkeys(row.model for row in rows))
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.8 * len(models)), squeeze=False)
    series = (("light", "p50"), ("light", "p99"), ("saturation", "p50"), ("saturation", "p99"))
    width = 0.8 / len(series)
    for ax, model in zip(axes[:, 0], models):
        mine = [row for row in rows if row.model == model]
        for k, (workload, figure) in enumerate(series):
            values = [row.spread(workload, figure).median * 1000 for row in mine]
            ax.bar([i + (k - 1.5) * width for i in range(len(mine))], values, width, label=f"{workload} {figure}")
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels(
            [f"{row.system.name}×{row.workers}" if row.system.scalable else row.system.name for row in mine],
            rotation=20,
            fontsize=8,
        )
        ax.set_ylabel("latency ms")
        ax.set_yscale("log")
        ax.set_title(model)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
