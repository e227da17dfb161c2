"""RELION-style outputs of a 2D classification, written as one snapshot.

:func:`write_class2d_snapshot` is the one writer of a Class2D snapshot (the offline
``livestream class2d`` command and the online actor both call it)::

    ranking = rank_classes(config, state, assignment, particles=particles)
    outputs = write_class2d_snapshot(
        folder, config, state, assignment, optics, table, ranking=ranking
    )
    outputs.classes_mrcs, outputs.selected_star, outputs.montage_png
"""

from __future__ import annotations

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
from pipelines.io.outputs import write_mrc, write_star

__all__ = ["Class2dOutputs", "write_class2d_snapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Class2dOutputs:
    """The files of one snapshot (all written atomically)."""

    classes_mrcs: Path
    model_star: Path
    data_star: Path
    selected_star: Path
    montage_png: Path


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
) -> Class2dOutputs:
    """Write one snapshot of a classification into ``folder``, each file once.

    ``<root>_classes.mrcs`` (class averages), ``<root>_model.star``
    (data_model_general, data_model_classes), ``<root>_data.star`` (every particle
    with class, psi, origin, max probability), ``<root>_selected.star`` (the
    particles ``ranking`` selects: its classes less the particle-level outliers,
    :func:`pipelines.class2d.ranker.select_particles`) and ``<root>_montage.png``
    (class averages best score first).  Returns their paths.

    ``output_box_px``: the particles' own box when the run worked at another one
    (an odd input box, :mod:`pipelines.class2d.box`); the averages, the image size
    and the pixel size are written at it.  Origins are in Å either way.
    """
    import pandas as pd

    out = Path(folder)
    box_px = config.box_px if output_box_px is None else output_box_px
    pixel_size_a = config.pixel_size_a
    if box_px != config.box_px:
        pixel_size_a = config.pixel_size_a * config.box_px / box_px
    averages = resample_images(state.references, box_px)
    classes_path = write_mrc(
        out / f"{root}_classes.mrcs",
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
                f"{i:06d}@{classes_path.name}" for i in range(1, k + 1)
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
        "rlnCurrentIteration": state.minibatch_index,
    }
    model_path = write_star(
        out / f"{root}_model.star",
        {"model_general": general, "model_classes": model},
    )
    table = assignment.relion_table(particles_table, config.pixel_size_a)
    data_path = write_star(
        out / f"{root}_data.star", {"optics": optics, "particles": table}
    )
    selected_path = select_particles(
        out / f"{root}_selected.star",
        config,
        ranking,
        assignment,
        optics,
        particles_table,
    )
    montage_path = write_class_montage(out / f"{root}_montage.png", averages, ranking)
    return Class2dOutputs(
        classes_mrcs=classes_path,
        model_star=model_path,
        data_star=data_path,
        selected_star=selected_path,
        montage_png=montage_path,
    )
