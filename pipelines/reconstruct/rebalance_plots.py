"""The plots of Rebalance Orientations (matplotlib, Agg canvas; no pyplot state).

- viewing-direction heatmaps before and after (azimuth x elevation histograms),
- bin locations coloured by their counts before and after,
- the rebalancing plot: bins in increasing count, the kept part blue up to the
  threshold and the removed part red above it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.io.outputs import write_bytes_atomic
from pipelines.reconstruct.rebalance import RebalanceResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_direction_heatmap", "write_rebalance_plots"]

_DPI = 100


def _azimuth_elevation(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    azimuth = np.rad2deg(np.arctan2(v[:, 1], v[:, 0]))
    elevation = np.rad2deg(np.arcsin(np.clip(v[:, 2], -1.0, 1.0)))
    return azimuth, elevation


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout figure; matplotlib (~1 s) loads on the first plot,
    not with the module (the service imports this through the 3D snapshot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return write_bytes_atomic(path, buffer.getvalue())


_EDGES = (np.linspace(-180, 180, 73), np.linspace(-90, 90, 37))  # 5° bins


def _heatmap(figure: Figure, ax: Any, directions: np.ndarray, title: str) -> None:
    """One azimuth x elevation histogram of unit ``directions`` ``(n, 3)``."""
    az, el = _azimuth_elevation(directions)
    hist, _, _ = np.histogram2d(az, el, bins=_EDGES)
    image = ax.imshow(
        hist.T,
        origin="lower",
        extent=(-180, 180, -90, 90),
        aspect="auto",
        cmap="viridis",
    )
    ax.set_title(title)
    ax.set_xlabel("azimuth (deg)")
    figure.colorbar(image, ax=ax, label="particles")


def _heatmaps(path: Path, directions: np.ndarray, keep: np.ndarray) -> Path:
    figure = _figure(10, 4)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, rows, title in zip(
        axes, (np.ones_like(keep), keep), ("before", "after"), strict=True
    ):
        _heatmap(
            figure,
            ax,
            directions[rows],
            f"viewing directions {title} ({int(rows.sum())})",
        )
    axes[0].set_ylabel("elevation (deg)")
    return _save(figure, path)


def write_direction_heatmap(
    path: str | Path, directions: np.ndarray, *, title: str
) -> Path:
    """The viewing-direction heatmap (azimuth x elevation, 5° bins) of unit
    ``directions`` ``(n, 3)`` as one PNG, atomically."""
    figure = _figure(5.5, 3.5)
    ax = figure.subplots()
    _heatmap(figure, ax, np.asarray(directions, dtype=np.float64), title)
    ax.set_ylabel("elevation (deg)")
    return _save(figure, Path(path))


def _bins(path: Path, result: RebalanceResult) -> Path:
    figure = _figure(10, 4)
    axes = figure.subplots(1, 2, sharey=True)
    az, el = _azimuth_elevation(result.centres)
    top = max(int(result.counts_before.max(initial=0)), 1)
    for ax, counts, title in zip(
        axes,
        (result.counts_before, result.counts_after),
        ("before", "after"),
        strict=True,
    ):
        points = ax.scatter(az, el, c=counts, s=12, cmap="magma", vmin=0, vmax=top)
        ax.set_title(f"bin counts {title} ({len(counts)} bins)")
        ax.set_xlabel("azimuth (deg)")
        figure.colorbar(points, ax=ax, label="particles")
    axes[0].set_ylabel("elevation (deg)")
    return _save(figure, path)


def _rebalancing(path: Path, result: RebalanceResult) -> Path:
    order = np.argsort(result.counts_before, kind="stable")
    before = result.counts_before[order]
    after = result.counts_after[order]
    x = np.arange(len(before))
    figure = _figure(8, 4)
    ax = figure.subplots()
    ax.bar(x, after, width=1.0, color="tab:blue", label="kept")
    ax.bar(x, before - after, bottom=after, width=1.0, color="tab:red", label="removed")
    ax.axhline(result.threshold_count, color="black", lw=0.8, ls="--")
    ax.set_xlabel("bin (increasing count)")
    ax.set_ylabel("particles")
    ax.set_title(
        f"threshold {result.threshold_count}: {result.n_excluded} particles removed"
    )
    ax.legend(loc="upper left")
    return _save(figure, path)


def write_rebalance_plots(
    folder: str | Path, directions: np.ndarray, result: RebalanceResult
) -> dict[str, Path]:
    """Write the three PNGs into ``folder``; returns name -> path."""
    out = Path(folder)
    return {
        "viewing_directions": _heatmaps(
            out / "viewing_directions.png", directions, result.keep
        ),
        "bin_counts": _bins(out / "bin_counts.png", result),
        "rebalancing": _rebalancing(out / "rebalancing.png", result),
    }
