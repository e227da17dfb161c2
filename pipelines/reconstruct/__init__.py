"""3D reconstruction: symmetry, Fourier back-projection, FSC, masks, post-processing."""

from __future__ import annotations

from pipelines.reconstruct.symmetry import symmetry_matrices

__all__ = ["symmetry_matrices"]
