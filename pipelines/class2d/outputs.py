"""RELION-style outputs of a 2D classification, written as one snapshot.

:func:`write_class2d_snapshot` is the one writer of a Class2D snapshot (the offline
``livestream class2d`` command and the online actor both call it)::

    ranking = rank_classes(config, state, assignment, particles=particles)
    outputs = write_class2d_snapshot(
        folder, config, state, assignment, optics, table, ranking=ranking
    )
    outputs.classes_mrcs, outputs.selected_star, outputs.montage_png

The files follow RELION's names for iteration ``NNN`` (the classifier's
``minibatch_index``): ``run_itNNN_classes.mrcs``, ``run_itNNN_model.star``,
``run_itNNN_data.star`` and ``run_itNNN_optimiser.star`` (a minimal
``optimiser_general`` block naming the other two, which RELION's Select job and
``relion_display`` read).  For tools that want the latest snapshot,
``run_classes.mrcs``, ``run_model.star``, ``run_data.star`` and
``run_optimiser.star`` are symbolic links to the newest iteration, replaced
atomically.  ``run_selected.star`` and ``run_montage.png`` are ours and keep one
name.  Every path inside the STAR files is relative to the project folder, taken
as the folder two levels above the job folder (``<project>/Class2D/job007``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d.assignment import Assignment
from pipelines.class2d.box import resample_images
from pipelines.class2d.montage import write_class_montage
from pipelines.class2d.ranker import ClassRanking, select_particles
from pipelines.class2d.state import Class2dConfig, Class2dState
from pipelines.class2d.vdam import class_resolution_a
from pipelines.io.iterations import latest_iteration, saved_iterations
from pipelines.io.outputs import fsync_directory, write_mrc, write_star

__all__ = ["Class2dOutputs", "latest_iteration", "write_class2d_snapshot"]

# the files of one iteration, each with a stable ``<root>_<suffix>`` link
ITERATION_FILES = ("classes.mrcs", "model.star", "data.star", "optimiser.star")


@dataclass(frozen=True, slots=True, kw_only=True)
class Class2dOutputs:
    """The files of one snapshot (all written atomically)."""

    classes_mrcs: Path
    model_star: Path
    data_star: Path
    optimiser_star: Path
    selected_star: Path
    montage_png: Path
    iteration: int


def write_class2d_snapshot(
    folder: str | Path,
    config: Class2dConfig,
    state: Class2dState,
    assignment: Assignment,
    optics: Any,
    particles_table: Any,
    *,
    ranking: ClassRanking,
    float16: bool = False,
    root: str = "run",
    output_box_px: int | None = None,
    keep_iterations: int | None = None,
) -> Class2dOutputs:
    """Write one snapshot of a classification into ``folder``, each file once.

    ``<root>_itNNN_classes.mrcs`` (class averages), ``<root>_itNNN_model.star``
    (data_model_general, data_model_classes), ``<root>_itNNN_data.star`` (every
    particle with class, psi, origin, max probability),
    ``<root>_itNNN_optimiser.star``, their ``<root>_*`` links (see the module
    docstring), ``<root>_selected.star`` (the
    particles ``ranking`` selects: its classes less the particle-level outliers,
    :func:`pipelines.class2d.ranker.select_particles`) and ``<root>_montage.png``
    (class averages best score first).  Returns their paths.

    ``output_box_px``: the particles' own box when the run worked at another one
    (an odd input box, :mod:`pipelines.class2d.box`); the averages, the image size
    and the pixel size are written at it.  Origins are in Å either way.

    ``keep_iterations``: delete the files of older iterations, keeping this many
    (the live classifier writes a snapshot every few mini-batches).
    """
    import pandas as pd

    out = Path(folder)
    iteration = int(state.minibatch_index)
    stem = f"{root}_it{iteration:03d}"
    project = out.absolute().parent.parent
    box_px = config.box_px if output_box_px is None else output_box_px
    pixel_size_a = config.pixel_size_a
    if box_px != config.box_px:
        pixel_size_a = config.pixel_size_a * config.box_px / box_px
    averages = resample_images(state.references, box_px)
    classes_path = write_mrc(
        out / f"{stem}_classes.mrcs",
        averages,
        pixel_size_a=pixel_size_a,
        float16=float16,
        is_stack=True,
    )
    k = config.n_classes
    counts = assignment.class_counts(k)
    resolution = class_resolution_a(config, state)
    model = pd.DataFrame(
        {
            "rlnReferenceImage": [
                f"{i:06d}@{_relative(classes_path, project)}" for i in range(1, k + 1)
            ],
            "rlnClassDistribution": counts / max(counts.sum(), 1),
            "rlnAccuracyRotations": np.full(k, config.psi_step_deg),
            "rlnAccuracyTranslationsAngst": np.full(
                k, config.offset_step_px * config.pixel_size_a
            ),
            "rlnEstimatedResolution": np.where(
                np.isfinite(resolution), resolution, 999.0
            ),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }
    )
    general = {
        "rlnReferenceDimensionality": 2,
        "rlnOriginalImageSize": box_px,
        "rlnPixelSize": pixel_size_a,
        "rlnNrClasses": k,
        "rlnCurrentIteration": iteration,
    }
    model_path = write_star(
        out / f"{stem}_model.star",
        {"model_general": general, "model_classes": model},
    )
    table = assignment.relion_table(particles_table, config.pixel_size_a)
    data_path = write_star(
        out / f"{stem}_data.star", {"optics": optics, "particles": table}
    )
    selected_path = select_particles(
        out / f"{root}_selected.star",
        config,
        ranking,
        assignment,
        optics,
        particles_table,
    )
    optimiser_path = write_star(
        out / f"{stem}_optimiser.star",
        {
            "optimiser_general": {
                "rlnOutputRootName": _relative(out / root, project),
                "rlnModelStarFile": _relative(model_path, project),
                "rlnExperimentalDataStarFile": _relative(data_path, project),
                "rlnCurrentIteration": iteration,
                "rlnNumberOfIterations": iteration,
                "rlnParticleDiameter": config.mask_diameter_a
                or config.box_px * config.pixel_size_a,
                "rlnDoCorrectCtf": 1,
                "rlnCtfDataArePhaseFlipped": 0,
            }
        },
    )
    montage_path = write_class_montage(out / f"{root}_montage.png", averages, ranking)
    for suffix in ITERATION_FILES:
        _link_latest(out / f"{root}_{suffix}", f"{stem}_{suffix}")
    if keep_iterations is not None:
        _prune(out, root, iteration, keep_iterations)
    return Class2dOutputs(
        classes_mrcs=classes_path,
        model_star=model_path,
        data_star=data_path,
        optimiser_star=optimiser_path,
        selected_star=selected_path,
        montage_png=montage_path,
        iteration=iteration,
    )


def _relative(path: Path, project: Path) -> str:
    return os.path.relpath(path.absolute(), project)


def _link_latest(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (a name in the same folder), atomically."""
    tmp = link.with_name(f".{link.name}.link.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
    fsync_directory(link.parent)


def _prune(folder: Path, root: str, newest: int, keep: int) -> None:
    old = sorted(i for i in saved_iterations(folder, root) if i != newest)
    for iteration in old[: max(0, len(old) - (keep - 1))]:
        for suffix in ITERATION_FILES:
            with contextlib.suppress(FileNotFoundError):
                (folder / f"{root}_it{iteration:03d}_{suffix}").unlink()
