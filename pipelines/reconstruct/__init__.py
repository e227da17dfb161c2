"""3D reconstruction: symmetry, Fourier back-projection, FSC, masks, post-processing.

Public API:

- :func:`symmetry_matrices`: point-group operators in RELION's conventions
- :class:`PosedParticles`, :func:`read_posed_particles`: images with poses and CTF
- :func:`backproject`, :func:`weights_to_map`, :class:`FourierSums`: insertion and
  the regularised division; :func:`insert_transforms` for prepared, weighted slices
- :func:`reconstruct_halves`, :class:`Reconstruction`: gold-standard half maps
- :func:`fourier_shell_correlation`, :class:`FscCurve`: FSC and its crossings
- :func:`create_mask`, :func:`lowpass_map`: relion_mask_create's soft masks
- :func:`postprocess`, :class:`PostprocessResult`, :func:`read_mtf_star`:
  relion_postprocess (corrected FSC, B-factor, sharpening)
"""

from __future__ import annotations

from pipelines.reconstruct.backproject import (
    FourierSums,
    backproject,
    insert_transforms,
    ssnr_from_fsc,
    weights_to_map,
)
from pipelines.reconstruct.fsc import FscCurve, fourier_shell_correlation
from pipelines.reconstruct.halves import Reconstruction, reconstruct_halves
from pipelines.reconstruct.mask import create_mask, lowpass_map
from pipelines.reconstruct.particles import (
    PosedParticles,
    read_posed_particles,
    write_posed_particles,
)
from pipelines.reconstruct.postprocess import (
    DetectorMtf,
    PostprocessResult,
    postprocess,
    read_mtf_star,
)
from pipelines.reconstruct.symmetry import symmetry_matrices

__all__ = [
    "DetectorMtf",
    "FourierSums",
    "FscCurve",
    "PosedParticles",
    "PostprocessResult",
    "Reconstruction",
    "backproject",
    "create_mask",
    "fourier_shell_correlation",
    "insert_transforms",
    "lowpass_map",
    "postprocess",
    "read_mtf_star",
    "read_posed_particles",
    "reconstruct_halves",
    "ssnr_from_fsc",
    "symmetry_matrices",
    "weights_to_map",
    "write_posed_particles",
]
