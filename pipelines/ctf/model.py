"""The contrast transfer function, in RELION's conventions.

Defocus is positive for underfocus, in Å.  ``astigmatism_angle_deg`` is the angle of
the defocus-U axis from the x (column) axis, counter-clockwise, as RELION's
``rlnDefocusAngle``.  The CTF is ``-sin(chi)`` with

    chi(k) = -pi*lambda*dz(theta)*k^2 + pi/2*Cs*lambda^3*k^4 - phase_shift - atan(Q0/sqrt(1-Q0^2))
    dz(theta) = (dU + dV)/2 + (dU - dV)/2 * cos(2*(theta - angle))

so it is positive at low frequency: the sign that applies to images with white
particles (RELION's after contrast inversion).  A raw micrograph has dark particles:
the simulator forms it with ``-ctf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mdcatch.crosscheck import DEFAULT_CS_MM


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (0.0197 Å at 300 kV)."""
    volts = voltage_kv * 1e3
    return float(12.2642598 / np.sqrt(volts * (1.0 + volts * 0.978475598e-6)))


# Defaults where nothing better is known (a 300 kV instrument, RELION's amplitude
# contrast for cryo samples); Cs has one source, mdcatch's crosscheck.
DEFAULT_VOLTAGE_KV = 300.0
DEFAULT_AMPLITUDE_CONTRAST = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class CtfParams:
    """Everything that sets a CTF (RELION labels in brackets)."""

    defocus_u_a: float  # rlnDefocusU
    defocus_v_a: float  # rlnDefocusV
    astigmatism_angle_deg: float = 0.0  # rlnDefocusAngle
    voltage_kv: float = DEFAULT_VOLTAGE_KV  # rlnVoltage
    cs_mm: float = DEFAULT_CS_MM  # rlnSphericalAberration
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST  # rlnAmplitudeContrast
    phase_shift_deg: float = 0.0  # rlnPhaseShift
    bfactor_a2: float = 0.0  # rlnCtfBfactor

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)


def frequency_grid(
    shape: tuple[int, int],
    pixel_size_a: float,
    *,
    rfft: bool = True,
    xp: ModuleType = np,
) -> tuple[Any, Any]:
    """Spatial frequencies ``(ky, kx)`` in 1/Å on the FFT grid of ``shape`` (ny, nx).

    With ``rfft`` the grid is that of ``rfft2`` (``nx // 2 + 1`` columns).
    """
    ny, nx = shape
    ky = xp.fft.fftfreq(ny, d=pixel_size_a)
    kx = (
        xp.fft.rfftfreq(nx, d=pixel_size_a)
        if rfft
        else xp.fft.fftfreq(nx, d=pixel_size_a)
    )
    return ky[:, None], kx[None, :]


def ctf_phase(ky: Any, kx: Any, params: CtfParams, *, xp: ModuleType = np) -> Any:
    """The aberration phase chi (radians) at frequencies ``(ky, kx)`` in 1/Å."""
    lam = electron_wavelength_a(params.voltage_kv)
    cs_a = params.cs_mm * 1e7
    k2 = ky * ky + kx * kx
    theta = xp.arctan2(ky, kx)
    angle = np.deg2rad(params.astigmatism_angle_deg)
    mean = 0.5 * (params.defocus_u_a + params.defocus_v_a)
    half_diff = 0.5 * (params.defocus_u_a - params.defocus_v_a)
    dz = mean + half_diff * xp.cos(2.0 * (theta - angle))
    q0 = params.amplitude_contrast
    k3 = np.arctan(q0 / np.sqrt(1.0 - q0 * q0))
    k5 = np.deg2rad(params.phase_shift_deg)
    return -np.pi * lam * dz * k2 + 0.5 * np.pi * cs_a * lam**3 * k2 * k2 - k5 - k3


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_a: float,
    params: CtfParams,
    *,
    rfft: bool = True,
    xp: ModuleType = np,
    dtype: Any = np.float32,
) -> Any:
    """The CTF on the FFT grid of an image of ``shape`` (ny, nx), unshifted.

    Returns ``(ny, nx // 2 + 1)`` with ``rfft`` else ``(ny, nx)``; includes the
    envelope ``exp(-B k^2 / 4)`` when ``params.bfactor_a2`` is non-zero.
    """
    ky, kx = frequency_grid(shape, pixel_size_a, rfft=rfft, xp=xp)
    ctf = -xp.sin(ctf_phase(ky, kx, params, xp=xp))
    if params.bfactor_a2:
        ctf = ctf * xp.exp(-0.25 * params.bfactor_a2 * (ky * ky + kx * kx))
    return ctf.astype(dtype)
