"""The Fourier pixels, in-plane rotations and translations a classification searches.

Images are transformed as ``rfft2(ifftshift(image), norm="ortho")``, so an image
centred on pixel ``N // 2`` has a nearly real transform and white noise of variance 1
per pixel has ``E|F|^2 = 1`` per Fourier pixel.  Only the half-plane pixels with
radius ``<= radius_px`` (Fourier pixels) take part; they are kept as a flat list of
``P`` pixels, so a stack of transforms is a ``(n, P)`` matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import StageInputError

__all__ = ["PoseSampling", "build_sampling", "restrict_sampling"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoseSampling:
    """Fourier pixel list and pose grid of one box size (see the module docstring).

    ``kx``/``ky`` ``(P,)`` are signed frequency indices, ``rows``/``cols`` their
    place in the rfft grid ``(N, N // 2 + 1)``, ``shell`` their integer radius and
    ``hermitian_weight`` 0.5 on the x = 0 column (each value appears twice there)
    and 1 elsewhere.  ``psi_deg`` ``(n_psi,)``; ``shifts_px`` ``(T, 2)`` [x, y] with
    ``phases`` ``(T, P)`` = ``exp(+2 pi i k.t / N)``: applying it moves an image by
    ``-t``, so it recentres a particle whose content sits at ``+t`` (RELION's
    ``rlnOriginX/Y`` of that particle is ``-t``).
    """

    box_px: int
    radius_px: int
    kx: np.ndarray
    ky: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    shell: np.ndarray
    hermitian_weight: np.ndarray
    psi_deg: np.ndarray
    shifts_px: np.ndarray
    phases: np.ndarray

    @property
    def n_pixels(self) -> int:
        return int(self.kx.size)

    @property
    def n_shells(self) -> int:
        return self.radius_px + 1

    @property
    def n_psi(self) -> int:
        return int(self.psi_deg.size)

    @property
    def n_shifts(self) -> int:
        return int(self.shifts_px.shape[0])


def build_sampling(
    box_px: int,
    *,
    radius_px: int | None = None,
    psi_step_deg: float = 6.0,
    offset_range_px: float = 5.0,
    offset_step_px: float = 1.0,
) -> PoseSampling:
    """Pixels within ``radius_px`` (default Nyquist - 1), psi every ``psi_step_deg``
    over 360°, and shifts on a square grid of ``offset_step_px`` inside a disc of
    radius ``offset_range_px`` (RELION's 2D search)."""
    if box_px < 8 or box_px % 2:
        raise StageInputError("<argument>", "box_px", box_px, "must be even and >= 8")
    radius = box_px // 2 - 1 if radius_px is None else int(radius_px)
    if not 2 <= radius <= box_px // 2 - 1:
        raise StageInputError(
            "<argument>", "radius_px", radius_px, f"must be in [2, {box_px // 2 - 1}]"
        )
    if not 0.0 < psi_step_deg <= 180.0 or offset_step_px <= 0 or offset_range_px < 0:
        raise StageInputError(
            "<argument>",
            "psi_step_deg/offset_step_px/offset_range_px",
            (psi_step_deg, offset_step_px, offset_range_px),
            "need 0 < psi step <= 180, offset step > 0, offset range >= 0",
        )
    ky_all = np.fft.fftfreq(box_px, 1.0 / box_px).astype(np.int64)
    kx_all = np.arange(box_px // 2 + 1)
    rows_grid, cols_grid = np.meshgrid(np.arange(box_px), kx_all, indexing="ij")
    ky_grid = ky_all[rows_grid]
    kx_grid = cols_grid
    radius_grid = np.hypot(kx_grid, ky_grid)
    keep = radius_grid <= radius + 0.5
    rows = rows_grid[keep]
    cols = cols_grid[keep]
    kx = kx_grid[keep].astype(np.float64)
    ky = ky_grid[keep].astype(np.float64)
    shell = np.minimum(np.rint(radius_grid[keep]).astype(np.int64), radius)
    hermitian_weight = np.where(cols == 0, 0.5, 1.0).astype(np.float32)
    n_psi = max(1, round(360.0 / psi_step_deg))
    psi_deg = np.arange(n_psi) * (360.0 / n_psi)
    steps = (
        np.arange(
            -np.floor(offset_range_px / offset_step_px),
            0.5 + np.floor(offset_range_px / offset_step_px),
        )
        * offset_step_px
    )
    sx, sy = np.meshgrid(steps, steps, indexing="xy")
    inside = np.hypot(sx, sy) <= offset_range_px + 1e-9
    shifts = np.stack([sx[inside], sy[inside]], axis=1)
    phases = np.exp(
        2j
        * np.pi
        * (shifts[:, :1] * kx[None, :] + shifts[:, 1:] * ky[None, :])
        / box_px
    ).astype(np.complex64)
    return PoseSampling(
        box_px=box_px,
        radius_px=radius,
        kx=kx,
        ky=ky,
        rows=rows,
        cols=cols,
        shell=shell,
        hermitian_weight=hermitian_weight,
        psi_deg=psi_deg,
        shifts_px=shifts,
        phases=phases,
    )


def restrict_sampling(
    sampling: PoseSampling, radius_px: int
) -> tuple[PoseSampling, np.ndarray]:
    """The same poses on the pixels with shell ``<= radius_px`` only, and the
    indices ``(P',)`` of those pixels in ``sampling`` (RELION's current image size)."""
    radius = int(np.clip(radius_px, 2, sampling.radius_px))
    keep = np.nonzero(sampling.shell <= radius)[0]
    return (
        PoseSampling(
            box_px=sampling.box_px,
            radius_px=radius,
            kx=sampling.kx[keep],
            ky=sampling.ky[keep],
            rows=sampling.rows[keep],
            cols=sampling.cols[keep],
            shell=sampling.shell[keep],
            hermitian_weight=sampling.hermitian_weight[keep],
            psi_deg=sampling.psi_deg,
            shifts_px=sampling.shifts_px,
            phases=np.ascontiguousarray(sampling.phases[:, keep]),
        ),
        keep,
    )
