"""Movies: dose-fractionated frames with drift, local motion, damage, gain and defects.

Per frame ``f`` (accumulated dose ``N_f = pre + (f + 1) * dose_per_frame``):

1. contrast ``C_f = irfft2(-2 ctf * MTF * D(N_f) * F[phi])`` (one inverse FFT),
2. intensity ``E_f = T * (1 + C_f)``,
3. motion: ``E_f`` resampled at ``r - s_f - l_f(r)`` (numba, cubic) so content moves by
   ``+(s_f + l_f)`` (see :mod:`pipelines.simulate.drift`),
4. counts ``Poisson(gain * dose_per_frame * pixel_size^2 * E_f)``; hot pixels get
   ``Poisson(hot_counts_per_frame)``, dead pixels 0.

The specimen is built on a field padded by the largest motion so nothing enters
from outside the frame.  Frames are ``uint8`` counts ``(n_frames, ny, nx)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.simulate import _frame_kernels
from pipelines.simulate.detector import (
    DetectorDefects,
    GainFlip,
    gain_reference_from_gain,
    random_defects,
    random_gain,
)
from pipelines.simulate.drift import LocalMotion, random_drift, random_local_motion
from pipelines.simulate.micrograph import (
    MicrographParams,
    build_specimen,
    expected_image_ft,
)
from pipelines.simulate.optics import critical_exposure_e_per_a2, read_mtf
from pipelines.simulate.truth import ContaminationBlob, MicrographTruth

__all__ = ["MovieParams", "MovieTruth", "simulate_movie"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MovieParams:
    """What to simulate; the specimen and optics come from ``micrograph``."""

    micrograph: MicrographParams = field(default_factory=MicrographParams)
    n_frames: int = 40
    dose_per_frame_e_per_a2: float = 1.0
    pre_exposure_e_per_a2: float = 0.0
    drift_px: float = 8.0  # length of the whole-frame drift path over the movie
    drift_jitter_px: float = 0.2
    local_motion_px: float = 1.0  # largest local shift (field corners, last frame)
    damage: bool = True
    mtf_path: Path | None = None  # RELION MTF STAR file of the detector
    gain_sd: float = 0.05  # 0 for a perfect detector
    gain_rotation_quarter_turns: int = 0  # orientation of the stored gain reference
    gain_flip: GainFlip = GainFlip.NONE
    hot_pixel_fraction: float = 2e-5
    dead_pixel_fraction: float = 2e-5
    hot_counts_per_frame: float = 30.0
    shot_noise: bool = True  # False: float32 expected counts (for exact tests)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MovieTruth:
    """The truth of a simulated movie.

    ``shifts_px`` ``(n_frames, 2)`` [x, y] is the whole-frame drift (frame 0 = 0);
    the total motion at a pixel is ``shifts_px[f] + local_motion.shift_px(f, y, x)``.
    ``gain`` ``(ny, nx)`` is the detector's sensitivity in the movie's orientation;
    ``gain_reference`` is the file a microscope would write (``1 / gain``, stored
    with ``gain_rotation_quarter_turns`` / ``gain_flip``, see
    :mod:`pipelines.simulate.detector`).  Particle coordinates in ``micrograph`` are
    where frame 0 shows them.
    """

    shifts_px: np.ndarray
    local_motion: LocalMotion
    micrograph: MicrographTruth
    gain: np.ndarray
    gain_reference: np.ndarray
    gain_rotation_quarter_turns: int
    gain_flip: GainFlip
    defects: DetectorDefects
    dose_per_frame_e_per_a2: float
    pre_exposure_e_per_a2: float
    pixel_size_a: float

    @property
    def defect_mask(self) -> np.ndarray:
        """``(ny, nx)`` bool: hot or dead pixels."""
        return self.defects.mask

    @property
    def n_frames(self) -> int:
        return int(self.shifts_px.shape[0])

    def total_shift_px(
        self,
        frame: np.ndarray | int,
        y_px: np.ndarray | float,
        x_px: np.ndarray | float,
    ) -> NDArray[np.float64]:
        """Whole-frame plus local shift ``(..., 2)`` [x, y] at frame(s) and position(s)."""
        f = np.asarray(frame)
        whole: NDArray[np.float64] = self.shifts_px[f][..., :]
        return whole + self.local_motion.shift_px(f, y_px, x_px)


def _crop_truth(
    truth: MicrographTruth, pad_y: int, pad_x: int, shape: tuple[int, int]
) -> MicrographTruth:
    particles = tuple(
        dataclasses.replace(p, x_px=p.x_px - pad_x, y_px=p.y_px - pad_y)
        for p in truth.particles
    )
    blobs = tuple(
        ContaminationBlob(
            x_px=b.x_px - pad_x,
            y_px=b.y_px - pad_y,
            radius_px=b.radius_px,
            thickness_a=b.thickness_a,
        )
        for b in truth.contamination
    )
    return dataclasses.replace(
        truth, shape_px=shape, particles=particles, contamination=blobs
    )


def simulate_movie(
    params: MovieParams,
    rng: np.random.Generator,
    *,
    volume: np.ndarray | None = None,
    workers: int = -1,
) -> tuple[np.ndarray, MovieTruth]:
    """Frames ``(n_frames, ny, nx)`` and their :class:`MovieTruth`.

    Frames are uint8 counts, or float32 expected counts when ``shot_noise`` is off.
    """
    mp = params.micrograph
    ny, nx = mp.shape_px
    n_frames = params.n_frames
    if n_frames < 1 or params.dose_per_frame_e_per_a2 <= 0:
        raise StageInputError(
            "<argument>",
            "n_frames/dose_per_frame_e_per_a2",
            (n_frames, params.dose_per_frame_e_per_a2),
            "need >= 1 frame and a positive dose",
        )
    shifts = random_drift(
        n_frames, params.drift_px, rng, jitter_px=params.drift_jitter_px
    )
    local = random_local_motion((ny, nx), n_frames, params.local_motion_px, rng)
    reach = float(np.abs(shifts).max()) + abs(params.local_motion_px) * 1.5 + 4.0
    full_y = scipy.fft.next_fast_len(ny + 2 * int(np.ceil(reach)), real=True)
    full_x = scipy.fft.next_fast_len(nx + 2 * int(np.ceil(reach)), real=True)
    pad_y, pad_x = (full_y - ny) // 2, (full_x - nx) // 2
    margin = mp.edge_margin_px
    padded_params = dataclasses.replace(
        mp,
        shape_px=(full_y, full_x),
        edge_margin_px=None if margin is None else margin + max(pad_x, pad_y),
    )
    if margin is None:
        box = mp.phantom_box_px if volume is None else int(np.shape(volume)[0])
        padded_params = dataclasses.replace(
            padded_params, edge_margin_px=0.5 * box + 1 + max(pad_x, pad_y)
        )
    specimen = build_specimen(padded_params, rng, volume=volume, workers=workers)
    mtf = read_mtf(params.mtf_path) if params.mtf_path is not None else None
    contrast_ft = expected_image_ft(specimen, mtf=mtf, workers=workers)
    truth_full = specimen.truth
    damage_rate = np.empty((0, 0), dtype=np.float32)
    if params.damage:
        ky = np.fft.fftfreq(full_y, d=mp.pixel_size_a)[:, None]
        kx = np.fft.rfftfreq(full_x, d=mp.pixel_size_a)[None, :]
        ne = critical_exposure_e_per_a2(np.sqrt(ky * ky + kx * kx), mp.ctf.voltage_kv)
        damage_rate = (-0.5 / ne).astype(np.float32)  # log attenuation per e/Å^2
    gain = (
        random_gain((ny, nx), rng, sd=params.gain_sd)
        if params.gain_sd > 0
        else np.ones((ny, nx), dtype=np.float32)
    )
    defects = random_defects(
        (ny, nx),
        rng,
        hot_fraction=params.hot_pixel_fraction,
        dead_fraction=params.dead_pixel_fraction,
        hot_counts_per_frame=params.hot_counts_per_frame,
    )
    frames = _render_frames(
        params,
        contrast_ft,
        specimen.transmission,
        shifts,
        local,
        damage_rate,
        gain * np.float32(params.dose_per_frame_e_per_a2 * mp.pixel_size_a**2),
        defects,
        (pad_y, pad_x),
        rng,
        workers,
    )
    truth = MovieTruth(
        shifts_px=shifts,
        local_motion=local,
        micrograph=dataclasses.replace(
            _crop_truth(truth_full, pad_y, pad_x, (ny, nx)),
            dose_e_per_a2=params.pre_exposure_e_per_a2
            + n_frames * params.dose_per_frame_e_per_a2,
        ),
        gain=gain,
        gain_reference=gain_reference_from_gain(
            gain, params.gain_rotation_quarter_turns, params.gain_flip
        ),
        gain_rotation_quarter_turns=params.gain_rotation_quarter_turns,
        gain_flip=params.gain_flip,
        defects=defects,
        dose_per_frame_e_per_a2=params.dose_per_frame_e_per_a2,
        pre_exposure_e_per_a2=params.pre_exposure_e_per_a2,
        pixel_size_a=mp.pixel_size_a,
    )
    return frames, truth


def _render_frames(
    params: MovieParams,
    contrast_ft: np.ndarray,
    transmission: np.ndarray,
    shifts: np.ndarray,
    local: LocalMotion,
    damage_rate: np.ndarray,
    scale: np.ndarray,
    defects: DetectorDefects,
    pad: tuple[int, int],
    rng: np.random.Generator,
    workers: int,
) -> np.ndarray:
    """The frames: per frame one spectrum pass, one inverse FFT, one warp, one draw."""
    full_y, full_x = transmission.shape
    ny, nx = scale.shape
    n_frames = params.n_frames
    frames = np.empty(
        (n_frames, ny, nx), dtype=np.uint8 if params.shot_noise else np.float32
    )
    ky_index = np.fft.fftfreq(full_y) * full_y
    kx_index = np.fft.rfftfreq(full_x) * full_x
    spectrum = np.empty_like(contrast_ft)
    intensity = np.empty((ny, nx), dtype=np.float32)
    n_hot = int(defects.hot.sum())
    for f in range(n_frames):  # each step is whole-array work
        sx, sy = float(shifts[f, 0]), float(shifts[f, 1])
        # whole-frame drift: an exact Fourier shift of the contrast
        ey = np.exp(-2j * np.pi * sy * ky_index / full_y).astype(np.complex64)
        ex = np.exp(-2j * np.pi * sx * kx_index / full_x).astype(np.complex64)
        dose = params.pre_exposure_e_per_a2 + (f + 1) * params.dose_per_frame_e_per_a2
        _frame_kernels.frame_spectrum(contrast_ft, damage_rate, dose, ey, ex, spectrum)
        contrast = scipy.fft.irfft2(spectrum, s=(full_y, full_x), workers=workers)
        coef = local.spatial_coefficients_px(f)
        # local motion (and the drift of the smooth transmission): cubic resampling
        _frame_kernels.warp_frame(
            transmission,
            contrast,
            coef[0],
            coef[1],
            sx,
            sy,
            float(pad[0]),
            float(pad[1]),
            bool(np.any(coef)),
            intensity,
        )
        if not params.shot_noise:
            frames[f] = np.clip(intensity, 0.0, None) * scale
            frames[f][defects.hot] = defects.hot_counts_per_frame
            frames[f][defects.dead] = 0.0
            continue
        uniforms = rng.random((ny, nx), dtype=np.float32)
        _frame_kernels.poisson_counts(intensity, scale, uniforms, frames[f])
        if n_hot:
            hot = rng.poisson(defects.hot_counts_per_frame, n_hot)
            frames[f][defects.hot] = np.minimum(hot, 255)
        frames[f][defects.dead] = 0
    return frames
