"""The fine pass of the coarse-then-fine pose search: the log-likelihoods of a
list of (particle, shift, class, psi) poses.

On the CPU a numba sampled product (:func:`score_listed_poses`) computes exactly
the listed entries; on a GPU (``xp`` = cupy) the poses are grouped into blocks of
one class x a run of psi and each block is one matrix product of the shifted
particle rows that need it by the references it holds.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from pipelines.class2d import _kernels
from pipelines.class2d.sampling import PoseSampling
from pipelines.errors import StageInputError
from pipelines.xp import to_numpy

__all__ = ["LISTED_COST", "ROW_COST", "FineBlocks", "score_listed_poses"]

ROW_COST = 16.0  # cost of gathering one shifted row, in columns of a product
LISTED_COST = 40.0  # a multiply-add of the CPU sampled product in BLAS ones
# (measured 12x at box 64 in cache, ~40x at box 128 where it is memory-bound)


class FineBlocks:
    """The fine (particle*T + shift, class, psi) triplets grouped into blocks of one
    class x ``n_psi / split`` consecutive psi: one BLAS product per block present,
    of the shifted particle rows that need it by the psi it holds (GPU), or, with
    ``split=None``, ungrouped for the CPU sampled product.  ``macs`` counts the
    multiply-adds, ``cost`` estimates the time in BLAS multiply-adds."""

    def __init__(
        self,
        codes: np.ndarray,
        sampling: PoseSampling,
        n_class: int,
        split: int | None = None,
    ):
        n_psi = sampling.n_psi
        self.sampling = sampling
        self.psi = codes % n_psi
        self.k = (codes // n_psi) % n_class
        self.bt = codes // (n_psi * n_class)
        self.rows, self.row_of = np.unique(self.bt, return_inverse=True)
        self.macs = float(codes.size) * 3.0 * sampling.n_pixels  # listed products
        self.cost = self.macs * LISTED_COST
        self.order = self.bounds = np.zeros(0, dtype=np.int64)
        if split is not None:
            self._plan(split)

    def _plan(self, split: int) -> None:
        """Group into blocks of ``n_psi / split`` psi; their products' cost."""
        sampling = self.sampling
        n_psi, n_pix = sampling.n_psi, sampling.n_pixels
        width = max(1, -(-n_psi // split))
        n_block = -(-n_psi // width)
        group = self.k * n_block + self.psi // width
        self.order = np.argsort(group, kind="stable")
        self.bounds = np.searchsorted(group[self.order], np.arange(group.max() + 2))
        n_group = self.bounds.size - 1
        rows_per = np.bincount(
            np.unique(group * self.rows.size + self.row_of) // self.rows.size,
            minlength=n_group,
        )
        cols_per = np.bincount(
            np.unique(group * n_psi + self.psi) // n_psi, minlength=n_group
        )
        b = self.bt // sampling.n_shifts
        n_b = int(b.max()) + 1
        parts_per = np.bincount(np.unique(group * n_b + b) // n_b, minlength=n_group)
        self.macs = float(np.sum(cols_per * (2.0 * rows_per + parts_per)) * n_pix)
        # thin products are memory-bound: each gathered row costs ROW_COST columns
        self.cost = self.macs + float(np.sum(rows_per)) * 2.0 * n_pix * ROW_COST

    def score(
        self,
        particles: np.ndarray,
        ctf: np.ndarray,
        inv_sigma2: np.ndarray,
        rotated_refs: np.ndarray,
        *,
        xp: ModuleType,
        force_blocks: bool = False,
    ) -> np.ndarray:
        """Log-likelihoods of the triplets (the :func:`score_poses` values): on a
        GPU (or with ``force_blocks``) by the block products, on the CPU by the
        numba sampled product :func:`score_listed_poses` (small BLAS calls are
        dominated by thread start-up on a busy CPU)."""
        sampling = self.sampling
        n_shift, n_psi = sampling.n_shifts, sampling.n_psi
        b_rows = self.rows // n_shift
        x = xp.asarray(particles[b_rows] * sampling.phases[self.rows % n_shift])
        weight = xp.asarray(
            ctf * (inv_sigma2 * sampling.hermitian_weight)[None, :], dtype=xp.float32
        )
        x *= weight[xp.asarray(b_rows)]
        shifted = xp.concatenate([x.real, x.imag], axis=1)  # (R, 2P) float32
        refs = xp.asarray(rotated_refs, dtype=xp.complex64)
        refs_stacked = xp.concatenate([refs.real, refs.imag], axis=1)
        power = refs.real**2 + refs.imag**2
        half_ctf_weight = 0.5 * xp.asarray(ctf, dtype=xp.float32) * weight
        b = self.bt // n_shift
        if xp is np and not force_blocks:
            return score_listed_poses(
                shifted,
                refs_stacked,
                half_ctf_weight,
                power,
                row=self.row_of,
                pose=self.k * n_psi + self.psi,
                particle=b,
            )
        if self.bounds.size == 0:
            self._plan(6)
        values = xp.empty(self.bt.size, dtype=xp.float32)
        for g in np.nonzero(np.diff(self.bounds))[
            0
        ]:  # blocks present: one product each
            sel = self.order[self.bounds[g] : self.bounds[g + 1]]
            r_k, r_pos = np.unique(self.row_of[sel], return_inverse=True)
            c_k, c_pos = np.unique(
                self.k[sel] * n_psi + self.psi[sel], return_inverse=True
            )
            p_k, p_pos = np.unique(b[sel], return_inverse=True)
            cols = xp.asarray(c_k)
            cross = shifted[xp.asarray(r_k)] @ refs_stacked[cols].T
            norm = half_ctf_weight[xp.asarray(p_k)] @ power[cols].T
            r_pos, c_pos, p_pos = (xp.asarray(a) for a in (r_pos, c_pos, p_pos))
            values[xp.asarray(sel)] = cross[r_pos, c_pos] - norm[p_pos, c_pos]
        return to_numpy(values)


def score_listed_poses(
    shifted: np.ndarray,
    refs_stacked: np.ndarray,
    half_ctf_weight: np.ndarray,
    power: np.ndarray,
    *,
    row: np.ndarray,
    pose: np.ndarray,
    particle: np.ndarray,
) -> np.ndarray:
    """``shifted[row] . refs_stacked[pose] - half_ctf_weight[particle] .
    power[pose]`` for each listed entry: float32 ``(R, 2P)``, ``(J, 2P)``,
    ``(B, P)``, ``(J, P)`` and index arrays of one length -> float32 values."""
    arrays = (shifted, refs_stacked, half_ctf_weight, power)
    names = "shifted/refs_stacked/half_ctf_weight/power"
    if any(a.dtype != np.float32 or a.ndim != 2 for a in arrays):
        raise StageInputError(
            "<array>", names, [a.dtype for a in arrays], "must be 2D float32"
        )
    n_pix = power.shape[1]
    if shifted.shape[1] != 2 * n_pix or refs_stacked.shape != (
        power.shape[0],
        2 * n_pix,
    ):
        raise StageInputError(
            "<array>", names, [a.shape for a in arrays], "pixel counts disagree"
        )
    rows, poses, particles = (
        np.ascontiguousarray(a, dtype=np.int64) for a in (row, pose, particle)
    )
    if not rows.shape == poses.shape == particles.shape:
        raise StageInputError("<array>", "row/pose/particle", None, "lengths differ")
    out = np.empty(rows.size, dtype=np.float32)
    _kernels.score_triplets(
        np.ascontiguousarray(shifted),
        np.ascontiguousarray(refs_stacked),
        np.ascontiguousarray(half_ctf_weight),
        np.ascontiguousarray(power),
        rows,
        poses,
        particles,
        out,
    )
    return out
