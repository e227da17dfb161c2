"""Particle images with their CTFs: the classifier's input, from arrays or a STAR file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.class2d.fourier import ctf_stack, images_to_pixels
from pipelines.class2d.references import circular_mask
from pipelines.class2d.sampling import PoseSampling
from pipelines.errors import StageInputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ParticleStack",
    "prepare_batch",
    "read_particle_stack",
    "stack_from_tables",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticleStack:
    """``images`` ``(n, N, N)`` float32 (white particles, as RELION after inversion)
    and per-particle CTF parameters ``(n,)``; one optics group, whose voltage, Cs and
    amplitude contrast come with the data (no default stands in for them)."""

    images: np.ndarray
    pixel_size_a: float
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 3 or self.images.shape[1] != self.images.shape[2]:
            raise StageInputError(
                "<array>", "images", self.images.shape, "must be (n, N, N)"
            )
        for name in ("defocus_u_a", "defocus_v_a", "astigmatism_angle_deg"):
            if np.shape(getattr(self, name)) != (n,):
                raise StageInputError(
                    "<array>", name, np.shape(getattr(self, name)), f"must be ({n},)"
                )

    @property
    def n_particles(self) -> int:
        return int(self.images.shape[0])

    @property
    def box_px(self) -> int:
        return int(self.images.shape[1])


def prepare_batch(
    particles: ParticleStack,
    indices: np.ndarray,
    sampling: PoseSampling,
    mask_radius_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised, masked transforms ``(B, P)`` and CTFs ``(B, P)`` of ``indices``.

    Each image has the mean and standard deviation of its background (outside the
    mask) removed, as ``relion_preprocess`` does, then is multiplied by the soft mask.
    """
    images = np.asarray(particles.images[np.asarray(indices)], dtype=np.float32)
    mask = circular_mask(sampling.box_px, mask_radius_px)
    background = mask < 0.5
    values = images[:, background]
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std = np.where(std > 0, std, 1.0)
    normed = (images - mean[:, None, None]) / std[:, None, None]
    pixels = images_to_pixels(normed * mask, sampling)
    ctf = ctf_stack(
        sampling,
        particles.pixel_size_a,
        defocus_u_a=particles.defocus_u_a[indices],
        defocus_v_a=particles.defocus_v_a[indices],
        astigmatism_angle_deg=particles.astigmatism_angle_deg[indices],
        voltage_kv=particles.voltage_kv,
        cs_mm=particles.cs_mm,
        amplitude_contrast=particles.amplitude_contrast,
        phase_shift_deg=particles.phase_shift_deg[indices],
    )
    return pixels, ctf


def read_particle_stack(star_path: str | Path) -> tuple[ParticleStack, object]:
    """Read a RELION particles STAR and its ``n@stack.mrcs`` images.

    Returns the stack and the ``data_particles`` DataFrame (rows in stack order).
    Stacks are looked up relative to the STAR file's folder, then the current one.
    """
    import mrcfile
    import starfile

    path = Path(star_path)
    blocks = starfile.read(path, always_dict=True)
    if "particles" not in blocks or "optics" not in blocks:
        raise StageInputError(
            path, "data blocks", sorted(blocks), "need data_optics and data_particles"
        )
    optics, table = blocks["optics"], blocks["particles"]
    for column in ("rlnImageName", "rlnDefocusU", "rlnDefocusV"):
        if column not in table.columns:
            raise StageInputError(path, column, None, "column missing")
    first = optics.iloc[0]
    names = table["rlnImageName"].astype(str).str.split("@", n=1, expand=True)
    numbers = names[0].astype(int).to_numpy() - 1
    files = names[1].to_numpy()
    box = int(first["rlnImageSize"])
    images = np.empty((len(table), box, box), dtype=np.float32)
    for stack_name in dict.fromkeys(files):  # one read per stack file
        candidate = path.parent / stack_name
        stack_path = candidate if candidate.exists() else Path(stack_name)
        if not stack_path.exists():
            raise StageInputError(path, "rlnImageName", stack_name, "stack not found")
        rows = np.nonzero(files == stack_name)[0]
        with mrcfile.mmap(stack_path, mode="r", permissive=True) as mrc:
            data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            if numbers[rows].max() >= data.shape[0]:
                raise StageInputError(
                    stack_path,
                    "rlnImageName",
                    int(numbers[rows].max()) + 1,
                    f"stack holds {data.shape[0]} images",
                )
            images[rows] = data[numbers[rows]]
    return stack_from_tables(images, optics, table, source=path), table


def stack_from_tables(
    images: np.ndarray,
    optics: pd.DataFrame,
    table: pd.DataFrame,
    rows: np.ndarray | slice | None = None,
    *,
    source: str | Path = "<data_optics>",
) -> ParticleStack:
    """A :class:`ParticleStack` from RELION ``optics`` and ``particles`` tables.

    ``images`` holds every row of ``table``; ``rows`` picks some (default: all).
    Missing CTF columns are zero; voltage, Cs and Q0 come from the first optics group,
    which must hold ``rlnSphericalAberration`` (RELION requires it): without it a
    :class:`StageInputError` names ``source`` (the STAR file) and the label.
    """
    chosen = slice(None) if rows is None else rows
    if "rlnSphericalAberration" not in optics.columns:
        raise StageInputError(
            source,
            "rlnSphericalAberration",
            None,
            "missing from data_optics (RELION requires the spherical aberration)",
        )

    def column(name: str, default: float) -> np.ndarray:
        if name in table.columns:
            return np.asarray(table[name].to_numpy(dtype=np.float64)[chosen])
        return np.full(len(table), default)[chosen]

    first = optics.iloc[0]
    return ParticleStack(
        images=images[chosen],
        pixel_size_a=float(first["rlnImagePixelSize"]),
        defocus_u_a=column("rlnDefocusU", 0.0),
        defocus_v_a=column("rlnDefocusV", 0.0),
        astigmatism_angle_deg=column("rlnDefocusAngle", 0.0),
        phase_shift_deg=column("rlnPhaseShift", 0.0),
        voltage_kv=float(first.get("rlnVoltage", 300.0)),
        cs_mm=float(first["rlnSphericalAberration"]),
        amplitude_contrast=float(first.get("rlnAmplitudeContrast", 0.1)),
    )
