"""The motion-correction stage: one movie file in, RELION-style files out.

:func:`run_motion` reads a movie (MRC, TIFF, EER), orients and applies the gain,
corrects motion (:func:`pipelines.motion.correct.correct_motion`) and writes, into
``out_dir`` and atomically:

* ``<stem>.mrc`` — dose-weighted micrograph (float16, mode 12; float32 on request)
* ``<stem>_noDW.mrc`` — the plain sum, only with ``save_no_dw`` (RELION's
  ``--save_noDW``, off by default: nothing downstream reads it)
* ``<stem>_PS.mrc`` — power spectrum of the plain sum (centred log10, 512²)
* ``<stem>.star`` — RELION's per-movie motion STAR

Everything comes in as arguments (paths, optics, dose): no clock, no globals.
Shifts are RELION's ``rlnMicrographShiftX/Y``: the correction applied to each
frame relative to the first, so a specimen drifting by ``+d`` px has shift ``-d``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import StageInputError
from pipelines.io.movies import EER_SUFFIXES, eer_frames_per_group, read_movie
from pipelines.io.outputs import write_mrc
from pipelines.motion.correct import MotionResult, correct_motion
from pipelines.motion.defects import orient_gain
from pipelines.motion.outputs import (
    CorrectedMicrograph,
    CorrectedOptics,
    MotionOutputs,
    write_corrected_micrographs_star,
    write_motion_star,
)

__all__ = [
    "CorrectedMicrograph",
    "CorrectedOptics",
    "MotionOutputs",
    "MotionResult",
    "correct_motion",
    "read_gain",
    "run_motion",
    "write_corrected_micrographs_star",
]

DEFAULT_EER_GROUP_DOSE_E_PER_A2 = 1.0


def read_gain(path: str | Path) -> np.ndarray:
    """A gain reference (MRC or TIFF, first image) as float32 ``(ny, nx)``."""
    gain_path = Path(path)
    if not gain_path.is_file():
        raise StageInputError(
            gain_path, "gain_path", str(gain_path), "gain reference not found"
        )
    frames = read_movie(gain_path)
    return np.ascontiguousarray(frames[0])


def _check_positive(movie: Path, name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise StageInputError(movie, name, value, "must be a positive number")


def run_motion(
    movie_path: str | Path,
    out_dir: str | Path,
    *,
    pixel_size_a: float,
    dose_per_frame_e_per_a2: float,
    voltage_kv: float,
    pre_exposure_e_per_a2: float = 0.0,
    gain_path: str | Path | None = None,
    gain_rotation_deg: int = 0,
    gain_flip: str | None = None,
    defect_mask: np.ndarray | None = None,
    eer_group_dose_e_per_a2: float | None = None,
    eer_upsampling: int = 1,
    patches: tuple[int, int] | None = (5, 5),
    bfactor_px2: float | None = None,
    local_bfactor_px2: float = 150.0,
    float32: bool = False,
    save_no_dw: bool = False,
    movie_name: str | None = None,
    gain_name: str | None = None,
    workers: int | None = None,
) -> MotionOutputs:
    """Motion-correct the movie at ``movie_path`` into ``out_dir``.

    ``pixel_size_a`` is the movie's pixel as written (for EER the sensor pixel);
    ``dose_per_frame_e_per_a2`` is per movie frame (for EER per *raw* EER frame:
    frames are grouped to ``eer_group_dose_e_per_a2``, default 1 e/Å²).
    ``gain_rotation_deg``/``gain_flip`` orient the gain (see
    :func:`pipelines.motion.defects.orient_gain`).  ``movie_name`` is the movie
    path written into the STAR file (default: ``movie_path`` as given), and
    ``gain_name`` the gain reference's (default: ``gain_path`` as given).
    """
    movie = Path(movie_path)
    out = Path(out_dir)
    _check_positive(movie, "pixel_size_a", pixel_size_a)
    _check_positive(movie, "voltage_kv", voltage_kv)
    if not np.isfinite(dose_per_frame_e_per_a2) or dose_per_frame_e_per_a2 < 0:
        raise StageInputError(
            movie, "dose_per_frame_e_per_a2", dose_per_frame_e_per_a2, "must be >= 0"
        )
    is_eer = movie.suffix.lower() in EER_SUFFIXES
    dose = dose_per_frame_e_per_a2
    pixel = pixel_size_a
    if is_eer:
        _check_positive(movie, "dose_per_frame_e_per_a2", dose_per_frame_e_per_a2)
        group = eer_frames_per_group(
            dose_per_frame_e_per_a2,
            eer_group_dose_e_per_a2 or DEFAULT_EER_GROUP_DOSE_E_PER_A2,
        )
        frames = read_movie(
            movie,
            eer_frames_per_group=group,
            eer_upsampling=eer_upsampling,
            native=True,
        )
        dose = dose_per_frame_e_per_a2 * group
        pixel = pixel_size_a / eer_upsampling
    else:
        group = 1
        frames = read_movie(movie, native=True)
    n_frames, ny, nx = frames.shape
    gain = None
    if gain_path is not None:
        gain = orient_gain(
            read_gain(gain_path), gain_rotation_deg, gain_flip, path=gain_path
        )
        if (
            is_eer
            and eer_upsampling > 1
            and gain.shape == (ny // eer_upsampling, nx // eer_upsampling)
        ):
            gain = np.repeat(
                np.repeat(gain, eer_upsampling, axis=0), eer_upsampling, axis=1
            )
        if gain.shape != (ny, nx):
            raise StageInputError(
                gain_path,
                "gain.shape",
                gain.shape,
                f"does not match the movie {movie} frames {(ny, nx)} after rotation "
                f"{gain_rotation_deg} and flip {gain_flip}",
            )
    result = correct_motion(
        frames,
        pixel_size_a=pixel,
        dose_per_frame_e_per_a2=dose,
        voltage_kv=voltage_kv,
        pre_exposure_e_per_a2=pre_exposure_e_per_a2,
        gain=gain,
        defect_mask=defect_mask,
        patches=patches,
        bfactor_px2=bfactor_px2,
        local_bfactor_px2=local_bfactor_px2,
        save_no_dw=save_no_dw,
        workers=workers,
    )
    del frames
    stem = movie.stem
    micrograph_path = write_mrc(
        out / f"{stem}.mrc", result.micrograph, pixel_size_a=pixel, float16=not float32
    )
    no_dw_path = (
        None
        if result.micrograph_no_dw is None
        else write_mrc(
            out / f"{stem}_noDW.mrc",
            result.micrograph_no_dw,
            pixel_size_a=pixel,
            float16=not float32,
        )
    )
    ps_pixel = pixel * max(ny, nx) / result.power_spectrum.shape[0]
    ps_path = write_mrc(
        out / f"{stem}_PS.mrc",
        result.power_spectrum,
        pixel_size_a=ps_pixel,
        float16=False,
    )
    star_path = write_motion_star(
        out / f"{stem}.star",
        result,
        movie_name=movie_name if movie_name is not None else str(movie),
        image_size=(nx, ny, n_frames),
        gain_name=gain_name
        if gain_name is not None
        else ("" if gain_path is None else str(gain_path)),
        extra_general={"rlnEERGrouping": group, "rlnEERUpsampling": eer_upsampling}
        if is_eer
        else None,
    )
    return MotionOutputs(
        movie_path=movie,
        micrograph_path=micrograph_path,
        micrograph_no_dw_path=no_dw_path,
        power_spectrum_path=ps_path,
        star_path=star_path,
        shifts_px=result.shifts_px,
        early_motion_a=result.early_motion_a,
        late_motion_a=result.late_motion_a,
        total_motion_a=result.total_motion_a,
        pixel_size_a=pixel,
        n_frames=n_frames,
        n_hot_pixels=result.n_hot_pixels,
        local_rms_residual_px=None
        if result.local is None
        else result.local.rms_residual_px,
    )
