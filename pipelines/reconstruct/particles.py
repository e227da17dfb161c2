"""Particles with poses and CTF, as RELION's ``relion_reconstruct`` reads them.

Conventions (RELION 3.1+):

- ``rlnAngleRot/Tilt/Psi`` are ZYZ Euler angles; the image is the projection of
  the map at ``R = euler_to_matrix(rot, tilt, psi)`` (see
  :mod:`pipelines.simulate.projection`).
- ``rlnOriginXAngst/YAngst`` is the origin of rotation: a particle whose centre sits
  ``+t`` Å from the box centre has origin ``-t``; reconstruction shifts each image by
  its origin to recentre it.
- The CTF of each particle comes from its row (``rlnDefocusU/V``, ``rlnDefocusAngle``,
  ``rlnPhaseShift``, ``rlnCtfBfactor`` when present) and its optics group
  (``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, which
  RELION requires, and ``rlnCtfDataAreCtfPremultiplied``, 0 when absent).
- Half sets: ``rlnRandomSubset`` (1 or 2) when present, else by row parity (rows
  1, 3, 5 ... are half 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.class2d import read_particle_stack
from pipelines.ctf.model import CtfParams, ctf_phase
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import (
    read_particles_star,
    write_particles_star,
)
from pipelines.io.outputs import write_mrc
from pipelines.reconstruct.geometry import euler_to_matrix, matrix_to_euler

__all__ = [
    "PosedParticles",
    "ctf_batch",
    "read_posed_particles",
    "write_posed_particles",
]

_DEFAULT_CTF = CtfParams(defocus_u_a=0.0, defocus_v_a=0.0)
_REQUIRED_OPTICS = (
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PosedParticles:
    """``n`` particle images ``(n, N, N)`` with poses, per-particle CTF and half set.

    Per-particle arrays are ``(n,)`` float64 unless stated; ``rotations`` ``(n, 3, 3)``;
    ``origin_px`` ``(n, 2)`` [x, y] (RELION's origin in pixels); ``subset`` ``(n,)``
    int 1 or 2; ``ctf_premultiplied`` ``(n,)`` bool.
    """

    images: np.ndarray
    pixel_size_a: float
    rotations: np.ndarray
    origin_px: np.ndarray
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_a2: np.ndarray
    voltage_kv: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    ctf_premultiplied: np.ndarray
    subset: np.ndarray

    def __post_init__(self) -> None:
        images = self.images
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise StageInputError(
                "<array>", "images", images.shape, "must be (n, N, N) square images"
            )
        n = images.shape[0]
        if self.rotations.shape != (n, 3, 3):
            raise StageInputError(
                "<array>", "rotations", self.rotations.shape, f"must be ({n}, 3, 3)"
            )
        if self.origin_px.shape != (n, 2):
            raise StageInputError(
                "<array>", "origin_px", self.origin_px.shape, f"must be ({n}, 2)"
            )
        for name in (
            "defocus_u_a",
            "defocus_v_a",
            "astigmatism_angle_deg",
            "phase_shift_deg",
            "bfactor_a2",
            "voltage_kv",
            "cs_mm",
            "amplitude_contrast",
            "ctf_premultiplied",
            "subset",
        ):
            shape = np.shape(getattr(self, name))
            if shape != (n,):
                raise StageInputError("<array>", name, shape, f"must be ({n},)")
        if not np.isin(self.subset, (1, 2)).all():
            raise StageInputError(
                "<array>", "subset", np.unique(self.subset), "values must be 1 or 2"
            )
        if self.pixel_size_a <= 0:
            raise StageInputError(
                "<array>", "pixel_size_a", self.pixel_size_a, "must be > 0"
            )

    @property
    def n_particles(self) -> int:
        return int(self.images.shape[0])

    @property
    def box_px(self) -> int:
        return int(self.images.shape[-1])

    def windowed(self, box_px: int) -> PosedParticles:
        """The same particles with images cropped (or zero-padded) about their
        centre ``N // 2`` to ``box_px``; poses, origins and CTFs are unchanged."""
        if box_px < 8:
            raise StageInputError("<argument>", "box_px", box_px, "must be >= 8")
        n, old = self.n_particles, self.box_px
        out = np.zeros((n, box_px, box_px), dtype=np.float32)
        src = max(old // 2 - box_px // 2, 0)
        dst = max(box_px // 2 - old // 2, 0)
        k = min(old - src, box_px - dst)
        out[:, dst : dst + k, dst : dst + k] = self.images[
            :, src : src + k, src : src + k
        ]
        return replace(self, images=out)

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        *,
        pixel_size_a: float,
        rotations: np.ndarray,
        origin_px: np.ndarray | None = None,
        defocus_u_a: np.ndarray | float = 0.0,
        defocus_v_a: np.ndarray | float | None = None,
        astigmatism_angle_deg: np.ndarray | float = 0.0,
        phase_shift_deg: np.ndarray | float = 0.0,
        bfactor_a2: np.ndarray | float = 0.0,
        voltage_kv: np.ndarray | float = _DEFAULT_CTF.voltage_kv,
        cs_mm: np.ndarray | float = _DEFAULT_CTF.cs_mm,
        amplitude_contrast: np.ndarray | float = _DEFAULT_CTF.amplitude_contrast,
        ctf_premultiplied: np.ndarray | bool = False,
        subset: np.ndarray | None = None,
    ) -> PosedParticles:
        """Build from arrays; scalars are broadcast to every particle."""
        n = len(images)

        def column(value: Any, dtype: Any = np.float64) -> np.ndarray:
            return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype), (n,)))

        return cls(
            images=np.asarray(images, dtype=np.float32),
            pixel_size_a=float(pixel_size_a),
            rotations=np.asarray(rotations, dtype=np.float64),
            origin_px=(
                np.zeros((n, 2))
                if origin_px is None
                else np.asarray(origin_px, dtype=np.float64)
            ),
            defocus_u_a=column(defocus_u_a),
            defocus_v_a=column(defocus_u_a if defocus_v_a is None else defocus_v_a),
            astigmatism_angle_deg=column(astigmatism_angle_deg),
            phase_shift_deg=column(phase_shift_deg),
            bfactor_a2=column(bfactor_a2),
            voltage_kv=column(voltage_kv),
            cs_mm=column(cs_mm),
            amplitude_contrast=column(amplitude_contrast),
            ctf_premultiplied=column(ctf_premultiplied, bool),
            subset=(
                np.where(np.arange(n) % 2 == 0, 1, 2)
                if subset is None
                else column(subset, np.int64)
            ),
        )


def read_posed_particles(
    star_path: str | Path, *, require_poses: bool = True
) -> PosedParticles:
    """Read a RELION particle STAR with poses and its image stacks.

    ``require_poses=False`` accepts a STAR without angles (an initial model's
    input): missing angles and origins read as 0.
    """
    path = Path(star_path)
    if not path.is_file():
        raise StageInputError(path, "file", str(path), "no such particle STAR file")
    optics, table = read_particles_star(path)
    _check_columns(path, optics, table, require_poses=require_poses)
    stack, _ = read_particle_stack(path)  # the images, in the rows' order
    pixel_size_a = float(optics["rlnImagePixelSize"].iloc[0])
    rows = _optics_rows(path, optics, table)

    def particle(name: str, default: float) -> np.ndarray:
        if name in table.columns:
            return np.asarray(table[name].to_numpy(dtype=np.float64))
        return np.full(len(table), default)

    def group(name: str, default: float | None = None) -> np.ndarray:
        if name in optics.columns:
            return np.asarray(optics[name].to_numpy(dtype=np.float64))[rows]
        return np.full(len(table), default)

    subset = (
        table["rlnRandomSubset"].to_numpy(dtype=np.int64)
        if "rlnRandomSubset" in table.columns
        else None
    )
    if subset is not None and not np.isin(subset, (1, 2)).all():
        raise StageInputError(
            path, "rlnRandomSubset", np.unique(subset).tolist(), "must be 1 or 2"
        )
    origin_a = np.stack(
        [particle("rlnOriginXAngst", 0.0), particle("rlnOriginYAngst", 0.0)], axis=1
    )
    return PosedParticles.from_arrays(
        stack.images,
        pixel_size_a=pixel_size_a,
        rotations=euler_to_matrix(
            particle("rlnAngleRot", 0.0),
            particle("rlnAngleTilt", 0.0),
            particle("rlnAnglePsi", 0.0),
        ),
        origin_px=origin_a / pixel_size_a,
        defocus_u_a=particle("rlnDefocusU", 0.0),
        defocus_v_a=particle("rlnDefocusV", 0.0),
        astigmatism_angle_deg=particle("rlnDefocusAngle", 0.0),
        phase_shift_deg=particle("rlnPhaseShift", _DEFAULT_CTF.phase_shift_deg),
        bfactor_a2=particle("rlnCtfBfactor", _DEFAULT_CTF.bfactor_a2),
        voltage_kv=group("rlnVoltage"),
        cs_mm=group("rlnSphericalAberration"),
        amplitude_contrast=group("rlnAmplitudeContrast"),
        ctf_premultiplied=group("rlnCtfDataAreCtfPremultiplied", 0.0) > 0,
        subset=subset,
    )


def ctf_batch(
    particles: PosedParticles, rows: np.ndarray, ky_a: np.ndarray, kx_a: np.ndarray
) -> np.ndarray:
    """CTFs ``(len(rows), *grid)`` of particles ``rows`` at frequencies in 1/Å.

    ``ky_a`` and ``kx_a`` broadcast to the grid (e.g. ``(Np, 1)`` and ``(1, Nx)``).
    The result has the dtype of the frequencies.  The formula is :func:`pipelines.ctf.model.ctf_phase`'s, called once per optics
    setting (voltage, Cs, Q0) with per-particle columns, plus the B-factor envelope.
    """
    dtype = np.result_type(ky_a, kx_a)
    out = np.empty(
        (len(rows), *np.broadcast_shapes(ky_a.shape, kx_a.shape)), dtype=dtype
    )
    optics = np.stack(
        [
            particles.voltage_kv[rows],
            particles.cs_mm[rows],
            particles.amplitude_contrast[rows],
        ],
        axis=1,
    )
    settings, which = np.unique(optics, axis=0, return_inverse=True)
    k2 = ky_a * ky_a + kx_a * kx_a
    for index, (voltage_kv, cs_mm, q0) in enumerate(settings):
        chosen = rows[which.ravel() == index]

        def column(values: np.ndarray, chosen: np.ndarray = chosen) -> Any:
            return values[chosen].astype(dtype)[:, None, None]

        params: Any = CtfParams(
            defocus_u_a=column(particles.defocus_u_a),
            defocus_v_a=column(particles.defocus_v_a),
            astigmatism_angle_deg=column(particles.astigmatism_angle_deg),
            voltage_kv=float(voltage_kv),
            cs_mm=float(cs_mm),
            amplitude_contrast=float(q0),
            phase_shift_deg=column(particles.phase_shift_deg),
        )
        ctf = -np.sin(ctf_phase(ky_a[None], kx_a[None], params))
        if particles.bfactor_a2[chosen].any():
            ctf = ctf * np.exp(-0.25 * column(particles.bfactor_a2) * k2[None])
        out[which.ravel() == index] = ctf
    return out


def _check_columns(
    path: Path, optics: Any, table: Any, *, require_poses: bool = True
) -> None:
    """Poses and image names per particle; optics RELION requires, one box size."""
    angles = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if require_poses else ()
    for column in (*angles, "rlnImageName"):
        if column not in table.columns:
            raise StageInputError(path, column, None, "column missing: need poses")
    for key in _REQUIRED_OPTICS:
        if key not in optics.columns:
            raise StageInputError(
                path, key, None, "missing from data_optics (RELION requires it)"
            )
    for key in ("rlnImagePixelSize", "rlnImageSize"):
        values = optics[key].to_numpy(dtype=np.float64)
        if not np.allclose(values, values[0]):
            raise StageInputError(
                path, key, values, "optics groups must share pixel size and box"
            )


def _optics_rows(path: Path, optics: Any, table: Any) -> NDArray[np.int64]:
    """For each particle, the row of its optics group in ``data_optics``."""
    group_of = {int(g): i for i, g in enumerate(optics["rlnOpticsGroup"])}
    groups = (
        table["rlnOpticsGroup"].to_numpy(dtype=np.int64)
        if "rlnOpticsGroup" in table.columns
        else np.full(len(table), int(optics["rlnOpticsGroup"].iloc[0]))
    )
    unknown = set(np.unique(groups).tolist()) - set(group_of)
    if unknown:
        raise StageInputError(
            path, "rlnOpticsGroup", sorted(unknown), "not in data_optics"
        )
    return np.array([group_of[int(g)] for g in groups], dtype=np.int64)


def write_posed_particles(
    star_path: str | Path, particles: PosedParticles, *, stack_name: str
) -> Path:
    """Write ``particles`` as a RELION particle STAR (one optics group, from the
    first particle's optics) and its image stack ``stack_name``, relative to the
    STAR's folder: what :func:`read_posed_particles` reads back."""
    import pandas as pd  # ~0.3 s: loaded on the first write, not with the module

    star = Path(star_path)
    n, box = particles.n_particles, particles.box_px
    px = particles.pixel_size_a
    write_mrc(
        star.parent / stack_name, particles.images, pixel_size_a=px, float16=False
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [float(particles.voltage_kv[0])],
            "rlnSphericalAberration": [float(particles.cs_mm[0])],
            "rlnAmplitudeContrast": [float(particles.amplitude_contrast[0])],
            "rlnImagePixelSize": [px],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    angles = matrix_to_euler(particles.rotations)
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@{stack_name}" for i in range(1, n + 1)],
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": particles.origin_px[:, 0] * px,
            "rlnOriginYAngst": particles.origin_px[:, 1] * px,
            "rlnDefocusU": particles.defocus_u_a,
            "rlnDefocusV": particles.defocus_v_a,
            "rlnDefocusAngle": particles.astigmatism_angle_deg,
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnRandomSubset": particles.subset.astype(int),
        }
    )
    return write_particles_star(star, optics, table)
