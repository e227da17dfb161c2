"""Files of a 3D auto-refinement, as RELION's Refine3D job names them.

- ``run_itNNN_half1_class001.mrc``, ``run_itNNN_half2_class001.mrc``: each
  iteration's half maps (:func:`write_refine_iteration`);
- ``run_half1_class001_unfil.mrc``, ``run_half2_class001_unfil.mrc``: the final
  half maps; ``run_class001.mrc``: the map of both halves (Wiener-filtered with
  the whole-map SSNR);
- ``run_data.star``: the input particles with their refined pose
  (``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``), ``rlnRandomSubset``,
  ``rlnClassNumber`` 1 and ``rlnMaxValueProbDistribution``;
- ``run_model.star``: ``data_model_general`` (``rlnCurrentResolution``,
  iterations, sampling), ``data_model_classes`` and ``data_model_class_1`` (the
  gold-standard FSC per shell: ``rlnSpectralIndex``, ``rlnResolution``,
  ``rlnAngstromResolution``, ``rlnGoldStandardFsc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.class3d.refine import RefineConfig, RefineResult
from pipelines.io.outputs import write_star
from pipelines.reconstruct.geometry import matrix_to_euler
from pipelines.reconstruct.halves import Reconstruction
from pipelines.reconstruct.outputs import fsc_table, write_map

__all__ = ["RefineFiles", "write_refine_iteration", "write_refine_result"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineFiles:
    map_path: Path
    half1_path: Path
    half2_path: Path
    data_star: Path
    model_star: Path


def write_refine_iteration(
    folder: str | Path, iteration: int, reconstruction: Reconstruction
) -> tuple[Path, Path]:
    """Both half maps of ``iteration``."""
    out = Path(folder)
    px = reconstruction.pixel_size_a
    return (
        write_map(
            out / f"run_it{iteration:03d}_half1_class001.mrc",
            reconstruction.half1,
            pixel_size_a=px,
        ),
        write_map(
            out / f"run_it{iteration:03d}_half2_class001.mrc",
            reconstruction.half2,
            pixel_size_a=px,
        ),
    )


def write_refine_result(
    folder: str | Path,
    *,
    config: RefineConfig,
    result: RefineResult,
    optics: Any,
    particles: Any,
) -> RefineFiles:
    """The final maps, ``run_data.star`` (``optics``/``particles``: the input
    STAR's tables, in the order of the refined particles) and ``run_model.star``."""
    out = Path(folder)
    rec = result.reconstruction
    px = config.pixel_size_a
    half1 = write_map(out / "run_half1_class001_unfil.mrc", rec.half1, pixel_size_a=px)
    half2 = write_map(out / "run_half2_class001_unfil.mrc", rec.half2, pixel_size_a=px)
    full = write_map(out / "run_class001.mrc", rec.full, pixel_size_a=px)
    angles = matrix_to_euler(result.rotations)
    table = particles.copy()
    table["rlnAngleRot"] = angles[:, 0]
    table["rlnAngleTilt"] = angles[:, 1]
    table["rlnAnglePsi"] = angles[:, 2]
    table["rlnOriginXAngst"] = result.origin_px[:, 0] * px
    table["rlnOriginYAngst"] = result.origin_px[:, 1] * px
    table["rlnRandomSubset"] = result.subset.astype(int)
    table["rlnClassNumber"] = 1
    table["rlnMaxValueProbDistribution"] = result.max_posterior
    data_star = write_star(
        out / "run_data.star", {"optics": optics, "particles": table}
    )
    last = result.iterations[-1]
    general = {
        "rlnReferenceDimensionality": 3,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": config.box_px,
        "rlnCurrentResolution": float(rec.resolution_a),
        "rlnCurrentImageSize": int(2 * last.radius_px),
        "rlnPixelSize": px,
        "rlnNrClasses": 1,
        "rlnNrBodies": 1,
        "rlnTau2FudgeFactor": config.tau2_fudge,
        "rlnSymmetryGroup": config.symmetry,
        "rlnCurrentIteration": last.iteration,
        "rlnAngularSampling": last.step_deg,
        "rlnOffsetStep": last.offset_step_px * px,
    }
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [full.name],
            "rlnClassDistribution": [1.0],
            "rlnEstimatedResolution": [float(rec.resolution_a)],
        }
    )
    fsc = fsc_table(rec.fsc).rename(
        columns={"rlnFourierShellCorrelation": "rlnGoldStandardFsc"}
    )
    fsc["rlnSigma2Noise"] = np.mean(result.noise_power, axis=0)[: len(fsc)]
    model_star = write_star(
        out / "run_model.star",
        {"model_general": general, "model_classes": classes, "model_class_1": fsc},
    )
    return RefineFiles(
        map_path=full,
        half1_path=half1,
        half2_path=half2,
        data_star=data_star,
        model_star=model_star,
    )
