"""Files of an initial-model iteration, as RELION's InitialModel job writes them.

- ``run_itNNN_classKKK.mrc``: one map per class (float32, voxel size in the header);
- ``run_itNNN_data.star``: the input particles with their best pose
  (``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``), ``rlnClassNumber`` and
  ``rlnMaxValueProbDistribution``;
- ``run_itNNN_model.star``: ``data_model_general`` and ``data_model_classes``
  (``rlnReferenceImage``, ``rlnClassDistribution``, ``rlnEstimatedResolution``);
- ``run_itNNN_classKKK_slices.png``: the central sections of each map along z, y
  and x, and below them its projections along the same axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.class3d.state import InitialModelConfig, InitialModelState
from pipelines.class3d.vdam import Assignment
from pipelines.io.outputs import write_star
from pipelines.reconstruct.geometry import matrix_to_euler
from pipelines.reconstruct.outputs import write_central_slices_png, write_map

__all__ = ["InitialModelFiles", "class_resolution_a", "write_initial_model"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialModelFiles:
    maps: list[Path]
    slices: list[Path]
    data_star: Path
    model_star: Path


def class_resolution_a(
    config: InitialModelConfig, state: InitialModelState
) -> np.ndarray:
    """Per class, where its half-set FSC falls below 0.143, in Å (the halves are
    aligned against one shared reference, so this is optimistic: a progress
    figure, not a gold-standard resolution)."""
    out = np.empty(state.n_classes)
    for k, fsc in enumerate(state.half_fsc):  # a loop over classes
        below = np.nonzero(fsc[1:] < 0.143)[0]
        shell = int(below[0]) + 1 if len(below) else len(fsc) - 1
        shell = min(shell, state.radius_px)
        out[k] = config.box_px * config.pixel_size_a / max(shell, 1)
    return out


def write_initial_model(
    folder: str | Path,
    *,
    iteration: int,
    config: InitialModelConfig,
    state: InitialModelState,
    maps: np.ndarray,
    optics: Any,
    particles: Any,
    assignment: Assignment,
) -> InitialModelFiles:
    """Write the files of ``iteration`` into ``folder``; ``maps`` ``(K, N, N, N)``
    (the state's, or symmetrised), ``optics``/``particles`` the input STAR tables."""
    out = Path(folder)
    stem = f"run_it{iteration:03d}"
    px = config.pixel_size_a
    map_paths, slice_paths = [], []
    for k, volume in enumerate(maps, start=1):  # a loop over classes
        map_paths.append(
            write_map(out / f"{stem}_class{k:03d}.mrc", volume, pixel_size_a=px)
        )
        slice_paths.append(
            write_central_slices_png(
                out / f"{stem}_class{k:03d}_slices.png", volume, projections=True
            )
        )
    angles = matrix_to_euler(assignment.rotations)
    table = particles.copy()
    table["rlnAngleRot"] = angles[:, 0]
    table["rlnAngleTilt"] = angles[:, 1]
    table["rlnAnglePsi"] = angles[:, 2]
    table["rlnOriginXAngst"] = assignment.origin_px[:, 0] * px
    table["rlnOriginYAngst"] = assignment.origin_px[:, 1] * px
    table["rlnClassNumber"] = assignment.class_index + 1
    table["rlnMaxValueProbDistribution"] = assignment.max_posterior
    data_star = write_star(
        out / f"{stem}_data.star", {"optics": optics, "particles": table}
    )
    resolution = class_resolution_a(config, state)
    general = {
        "rlnReferenceDimensionality": 3,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": config.box_px,
        "rlnCurrentResolution": float(resolution.min()),
        "rlnCurrentImageSize": int(2 * state.radius_px),
        "rlnPixelSize": px,
        "rlnNrClasses": state.n_classes,
        "rlnTau2FudgeFactor": config.tau2_fudge,
        "rlnSymmetryGroup": config.symmetry,
    }
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [str(p.name) for p in map_paths],
            "rlnClassDistribution": state.class_fractions,
            "rlnEstimatedResolution": resolution,
        }
    )
    model_star = write_star(
        out / f"{stem}_model.star", {"model_general": general, "model_classes": classes}
    )
    return InitialModelFiles(
        maps=map_paths, slices=slice_paths, data_star=data_star, model_star=model_star
    )
