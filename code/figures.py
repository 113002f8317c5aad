"""Figures of evaluation results shared by the evaluator, gen_eval and the demo's summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's global state alone
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image
from torchvision.utils import make_grid

from atomic import atomic_write


def metric_bar_chart(
    series: dict[str, dict[str, float]],
    path: str | Path,
    chance: dict[str, float] | None = None,
    title: str = "",
    intervals: dict[str, dict[str, tuple[float, float] | None]] | None = None,
) -> Path:
    """One panel per metric with a bar per series (label -> metric -> value), chance levels dashed where given,
    and each bar's 95% interval (label -> metric -> (low, high)) as an error bar where given.

    Each metric gets its own panel and y scale because the scores differ in range (accuracies, distances,
    FID); a series without a value for a metric (skipped, or NaN) has no bar there.
    """
    metrics = list(dict.fromkeys(m for scores in series.values() for m in scores))
    if not metrics:
        raise ValueError("metric_bar_chart needs at least one value")
    chance = chance or {}
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(2.4 * cols + 0.4, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, label in enumerate(series):
            value = series[label].get(metric)
            if value is None or not math.isfinite(value):
                continue
            ax.bar(i, value, width=0.8, color=f"C{i}")
            interval = (intervals or {}).get(label, {}).get(metric)
            end = value  # where the value's label goes: past the bar, and past its interval
            if interval is not None:
                low, high = interval
                ax.errorbar(i, value, yerr=[[value - low], [high - value]], color="k", capsize=3, lw=0.8)
                end = high if value >= 0 else low
            ax.annotate(
                f"{value:.3g}",
                (i, end),
                xytext=(0, 2 if value >= 0 else -2),
                textcoords="offset points",
                ha="center",
                va="bottom" if value >= 0 else "top",
                fontsize=7,
            )
        if metric in chance:
            ax.axhline(chance[metric], color="k", ls="--", lw=0.8)
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.margins(y=0.15)  # room for the value labels
        ax.set_xticks([])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles = [Patch(color=f"C{i}", label=label) for i, label in enumerate(series)]
    if chance.keys() & set(metrics):
        handles.append(Line2D([], [], color="k", ls="--", lw=0.8, label="chance"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_write(path) as f:  # never through a link at `path`
        fig.savefig(f, format=Path(path).suffix[1:] or "png", dpi=100)
    return Path(path)


def image_grid(gt: np.ndarray, samples: np.ndarray, path: str | Path, max_rows: int = 50) -> Path:
    """One row per test item, the ground truth then its samples: uint8 (N, H, W, 3) and (S, N, H, W, 3) -> PNG."""
    rows = min(len(gt), max_rows)
    tiles = np.concatenate([gt[:rows, None], samples[:, :rows].swapaxes(0, 1)], axis=1)  # (rows, 1 + S, H, W, 3)
    tiles = torch.from_numpy(np.ascontiguousarray(tiles)).flatten(0, 1).permute(0, 3, 1, 2)  # (rows (1 + S), 3, H, W)
    grid = make_grid(tiles, nrow=1 + len(samples), padding=0)  # (3, rows * H, (1 + S) * W)
    with atomic_write(path) as f:  # never through a link at `path`
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(f, format=Path(path).suffix[1:] or "png")
    return Path(path)


def grids_side_by_side(grids: dict[str, str | Path], path: str | Path, row_height: int, rows: int = 10) -> Path:
    """The first `rows` rows (of `row_height` pixels) of image grids (title -> PNG from `image_grid`), side by
    side under their titles, pixels shown as they are (no smoothing): the README's picture of a decoding."""
    images = []
    for grid in grids.values():
        with Image.open(grid) as image:
            images.append(np.asarray(image.convert("RGB"))[: rows * row_height])
    height = max(len(image) for image in images)
    fig = Figure(figsize=(sum(i.shape[1] for i in images) / height * 8.0 + 0.2 * len(images), 8.3))
    axes = fig.subplots(1, len(images), squeeze=False, gridspec_kw={"wspace": 0.04})
    for ax, title, image in zip(axes.flat, grids, images, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_axis_off()
    with atomic_write(path) as f:  # never through a link at `path`
        fig.savefig(f, format=Path(path).suffix[1:] or "png", dpi=100, bbox_inches="tight")
    return Path(path)
