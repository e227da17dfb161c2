"""RELION-format outputs of motion correction.

* :func:`write_motion_star` — the per-movie STAR RELION's own motioncorr writes
  (``data_general``, ``data_global_shift`` and, with a local model,
  ``data_local_motion_model`` and ``data_local_shift``); RELION's Bayesian
  polishing reads it.
* :func:`write_corrected_micrographs_star` — the job-level
  ``corrected_micrographs.star`` (``data_optics`` + ``data_micrographs``).

All files are written atomically through :mod:`pipelines.io.outputs`, as STAR
text without pandas (:func:`pipelines.io.outputs.write_star_text`: its import
was ~0.3 CPU s of every ``livestream motion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.io.outputs import write_star_text

if TYPE_CHECKING:
    from pipelines.motion.job import MotionResult

__all__ = [
    "CorrectedMicrograph",
    "CorrectedOptics",
    "MotionOutputs",
    "write_corrected_micrographs_star",
    "write_motion_star",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MotionOutputs:
    """Files written for one movie and the figures the service reports.

    ``shifts_px`` ``(n_frames, 2)``: global correction shifts [x, y] relative to
    the first frame (RELION's sign), in pixels of the written micrograph.
    """

    movie_path: Path
    micrograph_path: Path
    micrograph_no_dw_path: Path | None  # None: not asked for (save_no_dw)
    power_spectrum_path: Path
    star_path: Path
    shifts_px: np.ndarray
    early_motion_a: float
    late_motion_a: float
    total_motion_a: float
    pixel_size_a: float
    n_frames: int
    n_hot_pixels: int
    local_rms_residual_px: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectedOptics:
    """One row of ``data_optics`` in ``corrected_micrographs.star``."""

    optics_group: int
    optics_group_name: str
    original_pixel_size_a: float
    micrograph_pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    mtf_file: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectedMicrograph:
    """One row of ``data_micrographs``; paths as RELION records them (relative to
    the project folder)."""

    micrograph_name: str
    metadata_name: str
    power_spectrum_name: str
    optics_group: int
    accum_motion_total_a: float
    accum_motion_early_a: float
    accum_motion_late_a: float


def write_motion_star(
    path: str | Path,
    result: MotionResult,
    *,
    movie_name: str,
    image_size: tuple[int, int, int],
    binning: float = 1.0,
    gain_name: str = "",
    start_frame: int = 1,
    extra_general: Mapping[str, object] | None = None,
) -> Path:
    """Per-movie motion STAR.  ``image_size`` is ``(nx, ny, n_frames)`` of the
    frames aligned (EER: after grouping); ``result.pixel_size_a`` is written as the
    original pixel size; ``extra_general`` adds labels to ``data_general`` (e.g.
    ``rlnEERGrouping``, ``rlnEERUpsampling``)."""
    nx, ny, nz = image_size
    general: dict[str, object] = {
        "rlnImageSizeX": int(nx),
        "rlnImageSizeY": int(ny),
        "rlnImageSizeZ": int(nz),
        "rlnMicrographMovieName": movie_name,
    }
    if gain_name:
        general["rlnMicrographGainName"] = gain_name
    general.update(
        {
            "rlnMicrographBinning": float(binning),
            "rlnMicrographOriginalPixelSize": result.pixel_size_a,
            "rlnMicrographDoseRate": result.dose_per_frame_e_per_a2,
            "rlnMicrographPreExposure": result.pre_exposure_e_per_a2,
            "rlnVoltage": result.voltage_kv,
            "rlnMicrographStartFrame": int(start_frame),
            "rlnMotionModelVersion": 0 if result.local is None else 1,
        }
    )
    if extra_general:
        general.update(extra_general)
    n_frames = result.shifts_px.shape[0]
    frame_numbers = np.arange(start_frame, start_frame + n_frames)
    blocks: dict[str, Mapping[str, object]] = {
        "general": general,
        "global_shift": {
            "rlnMicrographFrameNumber": frame_numbers,
            "rlnMicrographShiftX": result.shifts_px[:, 0],
            "rlnMicrographShiftY": result.shifts_px[:, 1],
        },
    }
    if result.local is not None:
        local = result.local
        blocks["local_motion_model"] = {
            "rlnMotionModelCoeffsIdx": np.arange(36),
            "rlnMotionModelCoeff": local.coefficients.reshape(36),
        }
        n_patches = local.patch_centers_px.shape[0]
        blocks["local_shift"] = {
            "rlnMicrographFrameNumber": np.tile(frame_numbers, n_patches),
            "rlnCoordinateX": np.repeat(local.patch_centers_px[:, 0], n_frames),
            "rlnCoordinateY": np.repeat(local.patch_centers_px[:, 1], n_frames),
            "rlnMicrographShiftX": local.patch_shifts_px[:, :, 0].reshape(-1),
            "rlnMicrographShiftY": local.patch_shifts_px[:, :, 1].reshape(-1),
        }
    return write_star_text(path, blocks)


def write_corrected_micrographs_star(
    path: str | Path,
    rows: Sequence[CorrectedMicrograph],
    optics: Sequence[CorrectedOptics],
) -> Path:
    """Job-level ``corrected_micrographs.star`` (RELION 4 labels)."""
    groups = {o.optics_group for o in optics}
    missing = sorted({r.optics_group for r in rows} - groups)
    if missing:
        raise ValueError(f"{path}: rows use optics groups {missing} not in optics")
    optics_table = {
        "rlnOpticsGroupName": [o.optics_group_name for o in optics],
        "rlnOpticsGroup": [o.optics_group for o in optics],
        "rlnMicrographOriginalPixelSize": [o.original_pixel_size_a for o in optics],
        "rlnVoltage": [o.voltage_kv for o in optics],
        "rlnSphericalAberration": [o.cs_mm for o in optics],
        "rlnAmplitudeContrast": [o.amplitude_contrast for o in optics],
        "rlnMicrographPixelSize": [o.micrograph_pixel_size_a for o in optics],
    }
    if any(o.mtf_file for o in optics):
        optics_table = {
            **dict(list(optics_table.items())[:2]),
            "rlnMtfFileName": [o.mtf_file or "None" for o in optics],
            **dict(list(optics_table.items())[2:]),
        }
    micrographs = {
        "rlnCtfPowerSpectrum": [r.power_spectrum_name for r in rows],
        "rlnMicrographName": [r.micrograph_name for r in rows],
        "rlnMicrographMetadata": [r.metadata_name for r in rows],
        "rlnOpticsGroup": [r.optics_group for r in rows],
        "rlnAccumMotionTotal": [r.accum_motion_total_a for r in rows],
        "rlnAccumMotionEarly": [r.accum_motion_early_a for r in rows],
        "rlnAccumMotionLate": [r.accum_motion_late_a for r in rows],
    }
    return write_star_text(path, {"optics": optics_table, "micrographs": micrographs})
