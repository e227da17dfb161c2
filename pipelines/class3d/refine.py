"""Gold-standard 3D auto-refinement (RELION's ``relion_refine --auto_refine``, our
reading).

The particles are split into two halves (``PosedParticles.subset``: the STAR's
``rlnRandomSubset``, else by row parity) and each half is refined against its own
map, from the same start (the reference low-passed to ``initial_lowpass_a``).
Per iteration and half:

1. **E-step.**  The first iteration scores every rotation of a grid at
   ``initial_step_deg`` and every origin within ``offset_range_px`` of the
   particle's previous origin by the normalised cross-correlation (RELION's
   ``--firstiter_cc``: the reference's grey scale is unknown) and keeps the best
   pose.  Later iterations score the log-likelihood ``-|X - C P|^2 / s2`` (noise
   power ``s2`` per shell from the residuals of the previous iteration): globally
   on the grid while the step is coarser than ``local_from_deg``, then locally,
   on rotations ``R_prev exp([w])`` with rotation vectors ``w`` on a cubic
   lattice of the step within ``local_range_steps`` steps, times origins on a
   square lattice of the offset step within the same number of steps around the
   previous origin.  Either way the scores of a block of particles are real
   matrix products (BLAS; batched per particle for local searches) of the
   particles' weighted Fourier pixels within the current resolution limit and the
   references' central slices (gathered by a numba kernel).
2. **M-step.**  The ``max_poses`` most probable poses of each particle,
   weighted by their posterior, are back-projected into its half's Fourier sums
   (``pipelines.reconstruct``'s insertion kernel, once per symmetry operator);
   each half map is Wiener-filtered with the SSNR from the FSC of the two
   halves.  Below ``join_halves_below_a`` (40 Å) the next iteration's references
   both take the mean of the two maps, so that they keep one orientation
   (RELION's ``--low_resol_join_halves``; 0: never); the FSC is of the maps
   apart.
3. **Sampling.**  An iteration gains resolution when the half-map FSC crosses
   0.143 in a higher (whole) shell than before; hidden variables change little when the
   mean change of the best rotation is within one step or stopped shrinking.
   After an iteration with neither a gain nor large changes the angular step (and
   the offset step) halves, unless the step is already as fine as the resolution
   asks (``resolution / diameter`` radians, the arc one resolution element
   spans at the particle's edge) or ``min_step_deg``: then the refinement has
   converged and one last iteration uses every Fourier pixel up to Nyquist.

The map of both halves' sums (Wiener-filtered with the whole-map SSNR) is the
result; :func:`pipelines.reconstruct.postprocess` gives its masked FSC.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from pipelines.class3d.pixels import pixel_set, prepare_particles, soft_circle
from pipelines.class3d.refine_search import (
    Poses,
    Sampling,
    angle_deg,
    insert_entries,
    local_rotations,
    search_global,
    search_local,
    shell_power,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct.fsc import shell_index_grid
from pipelines.reconstruct.halves import Reconstruction, maps_from_sums
from pipelines.reconstruct.mask import lowpass_map
from pipelines.reconstruct.particles import PosedParticles
from pipelines.reconstruct.symmetry import symmetry_matrices
from pipelines.simulate.projection import prepare_volume_transform

__all__ = [
    "RefineConfig",
    "RefineIteration",
    "RefineResult",
    "local_rotations",
    "refine",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineConfig:
    """Parameters of a gold-standard refinement (defaults: RELION's auto-refine
    where it has one; see the module docstring for what each does)."""

    box_px: int
    pixel_size_a: float
    symmetry: str = "C1"
    particle_diameter_a: float | None = None
    initial_lowpass_a: float = 40.0
    join_halves_below_a: float = 40.0
    initial_step_deg: float = 15.0
    local_from_deg: float = 7.5
    min_step_deg: float = 0.5
    local_range_steps: float = 2.0
    offset_range_px: float = 3.0
    offset_step_px: float = 1.0
    min_offset_step_px: float = 0.125
    extra_shells: int | None = None
    max_poses: int = 4
    max_iterations: int = 20
    padding: int = 2
    tau2_fudge: float = 1.0

    def __post_init__(self) -> None:
        if self.box_px < 16 or self.box_px % 2:
            raise StageInputError(
                "<argument>", "box_px", self.box_px, "must be even and >= 16"
            )
        if self.pixel_size_a <= 0:
            raise StageInputError(
                "<argument>", "pixel_size_a", self.pixel_size_a, "must be > 0"
            )
        if not 0.1 <= self.min_step_deg <= self.initial_step_deg <= 30.0:
            raise StageInputError(
                "<argument>",
                "initial_step_deg/min_step_deg",
                (self.initial_step_deg, self.min_step_deg),
                "need 0.1 <= min <= initial <= 30",
            )
        if self.max_iterations < 2 or self.max_poses < 1:
            raise StageInputError(
                "<argument>",
                "max_iterations/max_poses",
                (self.max_iterations, self.max_poses),
                "need >= 2 / >= 1",
            )
        if self.initial_lowpass_a < 2.0 * self.pixel_size_a:
            raise StageInputError(
                "<argument>",
                "initial_lowpass_a",
                self.initial_lowpass_a,
                f"must be >= Nyquist ({2.0 * self.pixel_size_a:.2f} Å)",
            )
        symmetry_matrices(self.symmetry)  # an unknown group fails here

    @property
    def mask_radius_px(self) -> float:
        """Half the particle diameter (default 0.9 of the box), in pixels."""
        diameter_a = self.particle_diameter_a or 0.9 * self.box_px * self.pixel_size_a
        return min(diameter_a / (2.0 * self.pixel_size_a), self.box_px / 2.0 - 2.0)

    @property
    def diameter_a(self) -> float:
        return 2.0 * self.mask_radius_px * self.pixel_size_a

    def shell_of(self, resolution_a: float) -> float:
        """The (fractional) Fourier shell of a resolution in Å."""
        return self.box_px * self.pixel_size_a / resolution_a

    def required_step_deg(self, resolution_a: float) -> float:
        """The angular step a resolution asks for: one resolution element at the
        particle's edge, ``resolution / diameter`` radians."""
        return float(np.degrees(resolution_a / self.diameter_a))


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineIteration:
    """One iteration: sampling, the search's resolution limit, what changed."""

    iteration: int
    step_deg: float
    offset_step_px: float
    local: bool
    final: bool
    radius_px: int
    resolution_a: float
    rotation_change_deg: float
    offset_change_px: float
    poses_per_particle: float
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineResult:
    """The final reconstruction and every particle's best pose: ``rotations``
    ``(n, 3, 3)``, ``origin_px`` ``(n, 2)``, ``max_posterior`` ``(n,)``,
    ``subset`` ``(n,)`` (1 or 2)."""

    reconstruction: Reconstruction
    rotations: np.ndarray
    origin_px: np.ndarray
    max_posterior: np.ndarray
    subset: np.ndarray
    noise_power: np.ndarray
    iterations: list[RefineIteration]

    @property
    def resolution_a(self) -> float:
        return self.reconstruction.resolution_a


def _joined_below(maps: np.ndarray, shell: float) -> np.ndarray:
    """Half maps ``(2, N, N, N)`` with their Fourier components below ``shell``
    replaced by the mean of both (the references of the next iteration)."""
    ft = scipy.fft.rfftn(maps, axes=(1, 2, 3))
    low = shell_index_grid(maps.shape[-1]) < shell
    mean = 0.5 * (ft[0] + ft[1])
    ft[:, low] = mean[low]
    return np.asarray(
        scipy.fft.irfftn(ft, s=maps.shape[1:], axes=(1, 2, 3)), dtype=np.float32
    )


def _image_noise(
    particles: PosedParticles, rows: np.ndarray, config: RefineConfig
) -> np.ndarray:
    """Mean |X|^2 per shell of the masked images: the first noise estimate."""
    pixels = pixel_set(config.box_px, config.box_px // 2)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    x, _ = prepare_particles(particles, rows, pixels, mask)
    power, counts = shell_power(x, pixels.shell, config.box_px // 2 + 1)
    out = power / np.maximum(counts, 1)
    out[0] = out[1]
    return np.asarray(out)


def _start_maps(reference: np.ndarray, config: RefineConfig) -> np.ndarray:
    volume = np.asarray(reference, dtype=np.float32)
    if volume.shape != (config.box_px,) * 3:
        raise StageInputError(
            "<array>",
            "reference",
            volume.shape,
            f"must be ({config.box_px},) * 3, the particles' box",
        )
    low = lowpass_map(
        volume,
        pixel_size_a=config.pixel_size_a,
        resolution_a=config.initial_lowpass_a,
    )
    return np.stack([low, low])


def _reference_transform(volume: np.ndarray, config: RefineConfig) -> np.ndarray:
    n = config.box_px
    z, y, x = np.indices((n, n, n)) - n // 2
    r = np.sqrt(x * x + y * y + z * z)
    t = np.clip((r - config.mask_radius_px) / 3.0, 0.0, 1.0)
    masked = volume * (0.5 + 0.5 * np.cos(np.pi * t))
    return prepare_volume_transform(masked, oversampling=config.padding)


def _next_sampling(
    config: RefineConfig,
    sampling: Sampling,
    resolution_a: float,
    settled: bool,
) -> tuple[Sampling, bool]:
    """The next iteration's sampling and whether the refinement has converged."""
    radius = int(
        min(
            config.box_px // 2,
            np.ceil(config.shell_of(resolution_a))
            + (config.extra_shells or max(3, config.box_px // 10)),
        )
    )
    step, offset = sampling.step_deg, sampling.offset_step_px
    converged = False
    if settled:
        fine_enough = step <= config.required_step_deg(resolution_a)
        if fine_enough or step / 2.0 < config.min_step_deg:
            converged = True
        else:
            step /= 2.0
            offset = max(offset / 2.0, config.min_offset_step_px)
    return (
        Sampling(
            step_deg=step,
            offset_step_px=offset,
            local=step <= config.local_from_deg + 1e-9,
            cc=False,
            radius_px=config.box_px // 2 if converged else radius,
        ),
        converged,
    )


def refine(
    particles: PosedParticles,
    reference: np.ndarray,
    config: RefineConfig,
    *,
    on_iteration: Callable[[RefineIteration, Reconstruction], None] | None = None,
) -> RefineResult:
    """Refine ``particles`` against ``reference`` ``(N, N, N)`` (see the module
    docstring).  ``on_iteration(record, reconstruction)``, if given, is called
    after every iteration (the half maps of that iteration)."""
    if particles.box_px != config.box_px:
        raise StageInputError(
            "<array>", "images", particles.images.shape, f"box must be {config.box_px}"
        )
    halves = [np.nonzero(particles.subset == h)[0] for h in (1, 2)]
    if min(len(h) for h in halves) < 2:
        raise StageInputError(
            "<particles>",
            "rlnRandomSubset",
            tuple(len(h) for h in halves),
            "both half sets need at least 2 particles",
        )
    maps = _start_maps(reference, config)
    n = particles.n_particles
    poses = Poses(
        rotations=particles.rotations.copy(),
        origin_px=particles.origin_px.copy(),
        max_posterior=np.zeros(n),
        noise_power=np.stack([_image_noise(particles, h, config) for h in halves]),
    )
    ops = symmetry_matrices(config.symmetry)
    sampling = Sampling(
        step_deg=config.initial_step_deg,
        offset_step_px=config.offset_step_px,
        local=False,
        cc=True,
        radius_px=int(
            min(
                config.box_px // 2,
                np.ceil(config.shell_of(config.initial_lowpass_a))
                + (config.extra_shells or max(3, config.box_px // 10)),
            )
        ),
    )
    records: list[RefineIteration] = []
    best_shell, smallest_change = -1, np.inf
    final = False
    reconstruction: Reconstruction | None = None
    for iteration in range(1, config.max_iterations + 1):  # a loop over iterations
        start = time.perf_counter()
        if iteration == config.max_iterations and not final:  # the last: all data
            final = True
            sampling = dataclasses.replace(sampling, radius_px=config.box_px // 2)
        previous = poses.rotations.copy(), poses.origin_px.copy()
        sums = []
        n_entries = 0
        for h, rows in enumerate(halves):  # a loop over the two halves
            search = search_local if sampling.local else search_global
            entries, stats = search(
                _reference_transform(maps[h], config),
                particles,
                rows,
                poses,
                poses.noise_power[h],
                sampling,
                config,
            )
            measured = stats[0] / np.maximum(stats[1], 1)
            poses.noise_power[h] = np.where(
                stats[1] > 0, measured, poses.noise_power[h]
            )
            n_entries += len(entries.row)
            sums.append(insert_entries(particles, entries, config))
        reconstruction = maps_from_sums(
            sums[0],
            sums[1],
            pixel_size_a=config.pixel_size_a,
            symmetry=config.symmetry,
            tau2_fudge=config.tau2_fudge,
        )
        maps = np.stack([reconstruction.half1, reconstruction.half2])
        if config.join_halves_below_a > 0:
            maps = _joined_below(maps, config.shell_of(config.join_halves_below_a))
        change = float(np.mean(angle_deg(poses.rotations, previous[0], ops)))
        offset_change = float(np.mean(np.hypot(*(poses.origin_px - previous[1]).T)))
        resolution = reconstruction.resolution_a
        record = RefineIteration(
            iteration=iteration,
            step_deg=sampling.step_deg,
            offset_step_px=sampling.offset_step_px,
            local=sampling.local,
            final=final,
            radius_px=sampling.radius_px,
            resolution_a=resolution,
            rotation_change_deg=change if iteration > 1 else float("nan"),
            offset_change_px=offset_change,
            poses_per_particle=round(n_entries / n, 2),
            seconds=time.perf_counter() - start,
        )
        records.append(record)
        if on_iteration is not None:
            on_iteration(record, reconstruction)
        if final:
            break
        shell = int(reconstruction.fsc.crossing_index(0.143))  # whole shells
        gained = shell > best_shell
        best_shell = max(best_shell, shell)
        settled = iteration > 1 and (
            change <= sampling.step_deg or change >= 0.9 * smallest_change
        )
        smallest_change = min(smallest_change, change) if iteration > 1 else np.inf
        step_before = sampling.step_deg
        sampling, final = _next_sampling(
            config, sampling, resolution, settled and not gained
        )
        if sampling.step_deg != step_before:
            smallest_change = np.inf
    assert reconstruction is not None  # at least one iteration ran
    return RefineResult(
        reconstruction=reconstruction,
        rotations=poses.rotations,
        origin_px=poses.origin_px,
        max_posterior=poses.max_posterior,
        subset=particles.subset.copy(),
        noise_power=poses.noise_power,
        iterations=records,
    )
