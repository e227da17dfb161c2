"""A snapshot of a running initial model: every file one iteration shows.

:func:`write_initial_model_snapshot` writes, into the job folder, what
:func:`~pipelines.class3d.outputs.write_initial_model` writes (maps, central
slices, ``_data.star``, ``_model.star``) and beside it:

- ``run_itNNN_half{1,2}_classKKK_unfil.mrc``: each half set's map (RELION's names);
- ``run_itNNN_fsc.png``: the half-set FSC of every class;
- ``run_itNNN_directions.png``: the viewing directions of the assigned particles
  (the heatmap of Rebalance Orientations);
- ``initial_model.mrc``: the largest class, as RELION's InitialModel job leaves it.

With a symmetry other than C1 the maps are first turned onto the group's axes
(:func:`~pipelines.class3d.align.align_symmetry`) and the particles' poses with
them; the run itself stays in C1.  Iterations older than the newest
``keep_iterations`` are deleted.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class3d.align import align_symmetry
from pipelines.class3d.outputs import class_resolution_a, write_initial_model
from pipelines.class3d.state import InitialModelConfig, InitialModelState
from pipelines.class3d.vdam import Assignment, _ball_mask
from pipelines.reconstruct.backproject import (
    FourierSums,
    ssnr_from_fsc,
    weights_to_map,
)
from pipelines.reconstruct.fsc import FscCurve
from pipelines.reconstruct.outputs import write_fsc_png, write_map
from pipelines.reconstruct.rebalance import assign_bins, fibonacci_sphere
from pipelines.reconstruct.rebalance_plots import write_direction_heatmap

__all__ = [
    "COVERAGE_BINS",
    "InitialModelSnapshot",
    "half_maps",
    "latest_initial_model_iteration",
    "orientation_coverage",
    "write_initial_model_snapshot",
]

COVERAGE_BINS = 100  # directions of a Fibonacci sphere, ~20° apart
FINAL_MAP_NAME = "initial_model.mrc"


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialModelSnapshot:
    """Paths of one snapshot and its figures: ``resolution_a`` ``(K,)`` from the
    half-set FSC (an optimistic progress figure, see ``class_resolution_a``),
    ``coverage`` the fraction of :data:`COVERAGE_BINS` viewing directions with a
    particle, ``largest_class`` 0-based."""

    iteration: int
    maps: list[Path]
    half_maps: list[tuple[Path, Path]]
    slices: list[Path]
    data_star: Path
    model_star: Path
    fsc_png: Path
    directions_png: Path
    initial_model: Path
    resolution_a: np.ndarray
    coverage: float
    largest_class: int


def half_maps(config: InitialModelConfig, state: InitialModelState) -> np.ndarray:
    """Maps ``(K, 2, N, N, N)`` float32 of each class's two half sets, regularised
    like the class maps (half-set SSNR times ``tau2_fudge`` within the current
    limit) and masked by the same soft sphere."""
    n = config.box_px
    mask = _ball_mask(config)
    shells = np.arange(n // 2 + 1)
    out = np.empty((state.n_classes, 2, n, n, n), dtype=np.float32)
    for k in range(state.n_classes):  # a loop over classes and halves
        ssnr = config.tau2_fudge * ssnr_from_fsc(state.half_fsc[k])
        ssnr = np.where(shells <= state.radius_px, ssnr, 0.0)
        for h in range(2):
            sums = FourierSums(
                data=state.data[k, h],
                weight=state.weight[k, h],
                box_px=n,
                padding=config.padding,
                n_particles=0,
            )
            out[k, h] = weights_to_map(sums, ssnr=ssnr) * mask
    return out


def orientation_coverage(rotations: np.ndarray, n_bins: int = COVERAGE_BINS) -> float:
    """Fraction of ``n_bins`` evenly spread directions nearest to the viewing
    direction (row 2 of each rotation ``(n, 3, 3)``) of at least one particle; a
    view and its opposite fill the same plane of Fourier space and count alike."""
    if len(rotations) == 0:
        return 0.0
    directions = np.asarray(rotations, dtype=np.float64)[:, 2, :]
    centres = fibonacci_sphere(n_bins)
    hit = np.zeros(n_bins, dtype=bool)
    hit[assign_bins(directions, centres)] = True
    hit[assign_bins(-directions, centres)] = True
    return float(hit.mean())


def _symmetrised(
    config: InitialModelConfig, maps: np.ndarray, assignment: Assignment
) -> tuple[np.ndarray, Assignment, np.ndarray]:
    """Maps turned onto the group's axes and the poses turned with them, and the
    turn of each class ``(K, 3, 3)`` (identities in C1)."""
    turns = np.repeat(np.eye(3)[None], len(maps), axis=0)
    if config.symmetry.upper() == "C1":
        return maps, assignment, turns
    aligned = [
        align_symmetry(m, config.symmetry, pixel_size_a=config.pixel_size_a)
        for m in maps
    ]
    turns = np.stack([q for q, _ in aligned])
    # the map turned by Q is seen at R Q^T where the old one was seen at R
    turn = turns[assignment.class_index]
    return (
        np.stack([volume for _, volume in aligned]),
        dataclasses.replace(
            assignment,
            rotations=assignment.rotations @ np.transpose(turn, (0, 2, 1)),
        ),
        turns,
    )


def write_initial_model_snapshot(
    folder: str | Path,
    *,
    config: InitialModelConfig,
    state: InitialModelState,
    optics: Any,
    particles: Any,
    assignment: Assignment,
    keep_iterations: int | None = 3,
) -> InitialModelSnapshot:
    """Write iteration ``state.minibatch_index``'s files (module docstring);
    ``particles`` the STAR rows of the assigned particles, ``assignment`` theirs."""
    out = Path(folder)
    iteration = state.minibatch_index
    stem = f"run_it{iteration:03d}"
    maps, assignment, _ = _symmetrised(config, state.maps, assignment)
    files = write_initial_model(
        out,
        iteration=iteration,
        config=config,
        state=state,
        maps=maps,
        optics=optics,
        particles=particles,
        assignment=assignment,
    )
    px = config.pixel_size_a
    halves = half_maps(config, state)
    half_paths = [
        (
            write_map(
                out / f"{stem}_half1_class{k:03d}_unfil.mrc", h[0], pixel_size_a=px
            ),
            write_map(
                out / f"{stem}_half2_class{k:03d}_unfil.mrc", h[1], pixel_size_a=px
            ),
        )
        for k, h in enumerate(halves, start=1)
    ]
    curves = {
        f"class {k}": FscCurve(fsc=fsc, box_px=config.box_px, pixel_size_a=px)
        for k, fsc in enumerate(state.half_fsc, start=1)
    }
    fsc_png = write_fsc_png(out / f"{stem}_fsc.png", curves)
    coverage = orientation_coverage(assignment.rotations)
    directions_png = write_direction_heatmap(
        out / f"{stem}_directions.png",
        assignment.rotations[:, 2, :],
        title=f"viewing directions, iteration {iteration} ({coverage:.0%} covered)",
    )
    largest = int(np.argmax(state.class_fractions))
    final = write_map(out / FINAL_MAP_NAME, maps[largest], pixel_size_a=px)
    if keep_iterations is not None:
        _delete_older(out, iteration, keep_iterations)
    return InitialModelSnapshot(
        iteration=iteration,
        maps=files.maps,
        half_maps=half_paths,
        slices=files.slices,
        data_star=files.data_star,
        model_star=files.model_star,
        fsc_png=fsc_png,
        directions_png=directions_png,
        initial_model=final,
        resolution_a=class_resolution_a(config, state),
        coverage=coverage,
        largest_class=largest,
    )


_ITERATION = re.compile(r"run_it(\d+)_")


def latest_initial_model_iteration(folder: str | Path) -> int | None:
    """The newest iteration with a ``run_itNNN_data.star`` (``None``: none yet)."""
    found = [
        int(m.group(1))
        for p in Path(folder).glob("run_it*_data.star")
        if (m := _ITERATION.match(p.name)) is not None
    ]
    return max(found) if found else None


def _delete_older(folder: Path, newest: int, keep: int) -> None:
    """Delete the files of iterations before the newest ``keep`` (up to ``newest``)."""
    iterations = sorted(
        {
            int(m.group(1))
            for p in folder.glob("run_it*")
            if (m := _ITERATION.match(p.name)) is not None and int(m.group(1)) <= newest
        }
    )
    for old in iterations[:-keep] if keep > 0 else iterations:
        for path in folder.glob(f"run_it{old:03d}_*"):
            path.unlink(missing_ok=True)
