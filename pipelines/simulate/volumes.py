"""Volumes to image: a protein-like phantom made in code, and real maps and models.

Every volume is ``(z, y, x)`` float32 with its centre at voxel ``N // 2``, in
arbitrary density units (the micrograph simulator scales contrast itself).

The real 70S ribosome map in ``shared/data/real`` (``clean70SRibosome_vol_65p.mrc``)
has no pixel size in its header and values with sd ~7e-5: use it at
:data:`RIBOSOME_70S_PIXEL_SIZE_A` (5 Å/px, as ASPIRE's RELION tutorial does) and
normalise it with :func:`rescale_volume`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.reconstruct.symmetry import symmetry_matrices
from pipelines.simulate import _projection_kernels

__all__ = [
    "RIBOSOME_70S_PIXEL_SIZE_A",
    "load_map",
    "map_from_model",
    "phantom_volume",
    "rescale_volume",
]

RIBOSOME_70S_PIXEL_SIZE_A = 5.0
"""Pixel size to use for ``clean70SRibosome_vol_65p.mrc`` (its header has none)."""

_CA_STEP_A = 3.8
_HELIX_RISE_A = 1.5
_HELIX_RADIUS_A = 2.3
_HELIX_TURN_RAD = np.deg2rad(100.0)
_RESIDUE_VOLUME_A3 = 136.0  # 110 Da at 0.81 Da/Å^3


def _chain_coordinates(
    n_residues: int, radius_a: float, rng: np.random.Generator
) -> np.ndarray:
    """C-alpha-like positions ``(m, 3)`` [x, y, z] in Å of a compact random chain.

    Alternates helices (1.5 Å rise, 2.3 Å radius, 100° per residue), extended
    strands and loops; a step that would leave the sphere of ``radius_a`` is turned
    back towards the centre, which keeps the chain globular.
    """
    points: list[np.ndarray] = []
    position = rng.normal(scale=0.2 * radius_a, size=3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    total = 0
    while total < n_residues:
        kind = rng.choice(3, p=[0.45, 0.25, 0.30])
        length = int(rng.integers(8, 20)) if kind == 0 else int(rng.integers(4, 10))
        length = min(length, n_residues - total)
        if np.linalg.norm(position) > 0.7 * radius_a:
            direction = -position / np.linalg.norm(position) + 0.5 * rng.normal(size=3)
        else:
            direction = direction + 0.9 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        i = np.arange(1, length + 1)[:, None]
        if kind == 0:  # helix around its axis
            u = np.cross(direction, rng.normal(size=3))
            u /= np.linalg.norm(u)
            w = np.cross(direction, u)
            phase = _HELIX_TURN_RAD * i
            segment = (
                position
                + direction * _HELIX_RISE_A * i
                + _HELIX_RADIUS_A * (np.cos(phase) * u + np.sin(phase) * w)
            )
        elif kind == 1:  # extended strand
            segment = position + direction * 3.3 * i
        else:  # loop: a random walk with 3.8 Å steps
            steps = direction + 0.8 * rng.normal(size=(length, 3))
            steps *= _CA_STEP_A / np.linalg.norm(steps, axis=1, keepdims=True)
            segment = position + np.cumsum(steps, axis=0)
        norms = np.linalg.norm(segment, axis=1, keepdims=True)
        segment = np.where(norms > radius_a, segment * radius_a / norms, segment)
        points.append(segment)
        position = segment[-1]
        total += length
    return np.concatenate(points)


def phantom_volume(
    box_px: int,
    pixel_size_a: float,
    rng: np.random.Generator,
    *,
    symmetry: str = "C1",
    fill_fraction: float = 0.55,
) -> NDArray[np.float32]:
    """A protein-like phantom ``(box_px,)*3`` float32, max 1, asymmetric unless ``symmetry``.

    Gaussian "atoms" (a backbone atom and three side-chain atoms per residue) along a
    compact random chain of helices, strands and loops.  The particle's diameter is
    ``fill_fraction`` of the box; symmetric copies (any group of
    :func:`~pipelines.reconstruct.symmetry.symmetry_matrices`) of the asymmetric
    unit are placed about the box centre.
    """
    if box_px < 8 or pixel_size_a <= 0:
        raise StageInputError(
            "<argument>",
            "box_px/pixel_size_a",
            (box_px, pixel_size_a),
            "box >= 8, pixel > 0",
        )
    ops = symmetry_matrices(symmetry)
    radius_a = 0.5 * fill_fraction * box_px * pixel_size_a
    unit_radius_a = radius_a / len(ops) ** (1.0 / 3.0) if len(ops) > 1 else radius_a
    volume_a3 = 4.0 / 3.0 * np.pi * unit_radius_a**3
    n_residues = int(np.clip(0.8 * volume_a3 / _RESIDUE_VOLUME_A3, 30, 20000))
    backbone = _chain_coordinates(n_residues, unit_radius_a, rng)
    side = backbone[:, None, :] + rng.normal(scale=2.0, size=(len(backbone), 3, 3))
    atoms = np.concatenate([backbone, side.reshape(-1, 3)])
    weights = np.concatenate(
        [np.full(len(backbone), 1.0), rng.uniform(0.4, 1.2, 3 * len(backbone))]
    )
    if len(ops) > 1:
        atoms = atoms + np.array([radius_a - unit_radius_a, 0.0, 0.3 * unit_radius_a])
        atoms = np.einsum("sij,nj->sni", ops, atoms).reshape(-1, 3)
        weights = np.tile(weights, len(ops))
    centre = box_px // 2
    points_zyx = np.ascontiguousarray(atoms[:, ::-1] / pixel_size_a + centre)
    grid = np.zeros((box_px,) * 3, dtype=np.float64)
    _projection_kernels.deposit_points(points_zyx, weights.astype(np.float64), grid)
    sigma_px = max(1.5 / pixel_size_a, 0.7)  # 1.5 Å atoms (B ~ 180 Å^2), >= 0.7 px
    volume: NDArray[np.float64] = scipy.ndimage.gaussian_filter(
        grid, sigma_px, mode="constant"
    )
    return (volume / float(volume.max())).astype(np.float32)


def load_map(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read an MRC map: ``(volume (z, y, x) float32, pixel size in Å or None)``."""
    import mrcfile

    path = Path(path)
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise StageInputError(path, "data", None, "the MRC file holds no data")
            data = np.asarray(mrc.data, dtype=np.float32).copy()
            voxel = float(mrc.voxel_size.x)
    except (OSError, ValueError) as error:
        if isinstance(error, StageInputError):
            raise
        raise StageInputError(
            path, "header", None, f"not a readable MRC map: {error}"
        ) from error
    if data.ndim != 3:
        raise StageInputError(path, "shape", data.shape, "a map must be 3D")
    return data, (voxel if voxel > 0 else None)


def rescale_volume(
    volume: np.ndarray,
    *,
    from_pixel_size_a: float | None = None,
    to_pixel_size_a: float | None = None,
    box_px: int | None = None,
    workers: int = -1,
) -> np.ndarray:
    """Resample a cubic volume to another pixel size and box; normalise to max 1.

    Resampling is by Fourier cropping or zero-padding (exact for band-limited maps);
    then the box is cropped or padded about the centre to ``box_px``.  Without pixel
    sizes only the values are normalised (and the box changed).
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise StageInputError(
            "<array>", "volume", vol.shape, "must be a cube (N, N, N)"
        )
    if from_pixel_size_a and to_pixel_size_a and from_pixel_size_a != to_pixel_size_a:
        n = vol.shape[0]
        m = round(n * from_pixel_size_a / to_pixel_size_a)
        ft = np.fft.fftshift(scipy.fft.fftn(np.fft.ifftshift(vol), workers=workers))
        ft = _centre_fit(ft, m)
        vol = np.fft.fftshift(
            scipy.fft.ifftn(np.fft.ifftshift(ft), workers=workers)
        ).real
        vol = vol.astype(np.float32)
    if box_px is not None:
        vol = _centre_fit(vol, box_px)
    peak = float(np.abs(vol).max())
    if peak == 0.0:
        raise StageInputError(
            "<array>", "volume", "all zero", "cannot normalise an empty map"
        )
    return (vol / peak).astype(np.float32)


def _centre_fit(array: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a cube about its centre voxel ``N // 2`` to ``size``."""
    n = array.shape[0]
    out = np.zeros((size,) * 3, dtype=array.dtype)
    lo_src = max(n // 2 - size // 2, 0)
    lo_dst = max(size // 2 - n // 2, 0)
    k = min(n - lo_src, size - lo_dst)
    out[lo_dst : lo_dst + k, lo_dst : lo_dst + k, lo_dst : lo_dst + k] = array[
        lo_src : lo_src + k, lo_src : lo_src + k, lo_src : lo_src + k
    ]
    return out


def map_from_model(
    cif_path: str | Path, pixel_size_a: float, box_px: int
) -> np.ndarray:
    """Density ``(box_px,)*3`` float32 (max 1) of an atomic model, by gemmi.

    Uses ``gemmi.DensityCalculatorE`` (electron scattering factors) at resolution
    ``2 * pixel_size_a``; the model's centre of its atoms goes to voxel ``box_px // 2``.
    """
    import gemmi

    path = Path(cif_path)
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as error:
        raise StageInputError(
            path, "model", None, f"gemmi cannot read it: {error}"
        ) from error
    structure.remove_ligands_and_waters()
    structure.remove_hydrogens()
    model = structure[0]
    positions = np.array([a.pos.tolist() for ch in model for res in ch for a in res])
    if positions.size == 0:
        raise StageInputError(path, "atoms", 0, "the model has no atoms")
    length_a = box_px * pixel_size_a
    shift = length_a * (box_px // 2) / box_px - positions.mean(axis=0)
    structure.cell = gemmi.UnitCell(length_a, length_a, length_a, 90, 90, 90)
    structure.spacegroup_hm = "P 1"
    structure.setup_cell_images()
    model = structure[0]
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    calculator = gemmi.DensityCalculatorE()
    calculator.d_min = 2.0 * pixel_size_a
    calculator.set_grid_cell_and_spacegroup(structure)
    calculator.grid.set_size(box_px, box_px, box_px)
    calculator.add_model_density_to_grid(model)
    calculator.grid.symmetrize_sum()
    grid = np.array(calculator.grid, copy=True)  # (x, y, z)
    volume = np.ascontiguousarray(grid.transpose(2, 1, 0), dtype=np.float32)
    return volume / float(volume.max())
