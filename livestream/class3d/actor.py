"""The online 3D initial model of a session: one VDAM run fed the particles of
the selected 2D classes, refined mini-batch by mini-batch as they arrive,
checkpointed atomically and resumed after a restart.

The daemon owns one :class:`Class3dActor` per session and calls, from a worker
thread (every call is synchronous and CPU-bound)::

    actor = Class3dActor.resume(folder) or Class3dActor(folder, settings, seed=0)
    actor.feed(selected_star)         # after each 2D snapshot; new rows only
    while actor.step():               # one mini-batch each; False = wait for data
        if actor.minibatches_since_snapshot >= settings.snapshot_every:
            info = actor.snapshot()   # files + info.payload for the class3d event
            actor.checkpoint()

The pool (:class:`livestream.class2d.pool.ParticlePool`) follows the 2D
selection (``run_selected.star``): a particle no longer selected is retired and
not drawn again.  The model starts (random poses, one blob per class) once
``start_particles`` are in the pool and is never restarted: each mini-batch moves
the running Fourier sums by the schedule's step, the schedule running on past its
``n_minibatches`` at its final step and batch size.  Mini-batches are drawn with
the state's own generator, half from particles never used when there are any,
equal numbers from even and odd pool indices (the half sets stay disjoint: a
particle's half is its pool index parity).  Stepping pauses once ``max_passes``
times the pool has been processed and resumes as particles arrive.  Images are
Fourier-cropped to ``box_px`` when the particles' box is larger.  The checkpoint
holds the model's full state, the seen mask and the pool's rows, so a resumed
actor continues exactly where it left off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livestream.actors.checkpoint import (
    CHECKPOINT_NAME,
    read_actor_checkpoint,
    state_fields,
    write_actor_checkpoint,
)
from livestream.class2d.pool import ParticlePool
from livestream.class2d.pool.files import POOL_FOLDER
from pipelines.class2d.box import resample_images, working_box_px
from pipelines.class2d.schedule import minibatch_size
from pipelines.class3d import (
    InitialModelConfig,
    InitialModelState,
    assign_particles,
    initialise_state,
    vdam_step,
)
from pipelines.class3d.snapshot import write_initial_model_snapshot
from pipelines.class3d.state import DEFAULT_SCHEDULE, restore_rng
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of
from pipelines.reconstruct import PosedParticles

__all__ = ["CHECKPOINT_NAME", "Class3dActor", "Class3dSettings", "Class3dSnapshot"]

SCHEMA = "livestream.class3d/1"
KEEP_ITERATIONS = 3  # snapshots of older iterations are deleted
NEW_FRACTION = 0.5  # share of a mini-batch drawn from particles never used


@dataclass(frozen=True, slots=True, kw_only=True)
class Class3dSettings:
    """The model's parameters (box and pixel size come from the first particles);
    the ``[class3d]`` config section's keys."""

    start_particles: int = 5000
    symmetry: str = "C1"
    classes: int = 1
    mini_batch: int = 500
    n_minibatches: int = 60
    snapshot_every: int = 10
    snapshot_sample: int = 5000
    box_px: int = 64
    angular_step_deg: float = 15.0
    particle_diameter_a: float | None = None
    max_passes: float = 3.0

    def __post_init__(self) -> None:
        if self.start_particles < max(2, 2 * self.classes):
            raise StageInputError(
                "<settings>",
                "start_particles",
                self.start_particles,
                f">= 2 per class ({2 * self.classes})",
            )
        if self.box_px < 16 or self.box_px % 2:
            raise StageInputError(
                "<settings>", "box_px", self.box_px, "must be even and >= 16"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Class3dSnapshot:
    """Paths written by :meth:`Class3dActor.snapshot` and the ``class3d`` event
    body (``payload``; schema ``livestream.class3d/1``, see docs/live3d.md)."""

    maps: list[Path]
    slices_png: list[Path]
    fsc_png: Path
    directions_png: Path
    data_star: Path
    model_star: Path
    initial_model: Path
    payload: dict[str, Any]


class Class3dActor:
    """One session's online initial model; see the module docstring."""

    def __init__(
        self,
        folder: str | Path,
        settings: Class3dSettings,
        *,
        seed: int,
        project: str | Path | None = None,
        pool: ParticlePool | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.seed = seed
        self.pool = pool or ParticlePool(
            Path.cwd() if project is None else project, self.folder / POOL_FOLDER
        )
        self.config: InitialModelConfig | None = None
        self.state: InitialModelState | None = None
        self.seen = np.zeros(0, dtype=bool)  # per pool row: used in a mini-batch
        self.minibatches_since_snapshot = 0
        self._sync_pool()

    @property
    def pool_size(self) -> int:
        """Selected particles the model learns from (pool rows not retired)."""
        return self.pool.n_active

    @property
    def particles_seen(self) -> int:
        """Distinct active pool rows (still selected) used in a mini-batch."""
        return int(np.count_nonzero(self.seen & self.pool.active))

    def feed(self, particles_star: str | Path) -> int:
        """Follow ``particles_star`` (the 2D selection): add its new rows, retire
        rows no longer in it; return how many were added."""
        added = self.pool.feed(particles_star)
        self._sync_pool()
        return added

    def _sync_pool(self) -> None:
        """Make the config on the first particles; grow the seen mask."""
        if self.config is None and self.pool.size:
            box_in = int(self.pool.box[-1])
            box = min(self.settings.box_px, working_box_px(box_in))
            pixel_size_a = float(self.pool.optics.iloc[0]["rlnImagePixelSize"])
            schedule = dataclasses.replace(
                DEFAULT_SCHEDULE,
                n_minibatches=self.settings.n_minibatches,
                final_max=self.settings.mini_batch,
                final_min=min(DEFAULT_SCHEDULE.final_min, self.settings.mini_batch),
                initial_max=max(2, self.settings.mini_batch // 5),
                initial_min=min(
                    DEFAULT_SCHEDULE.initial_min, max(2, self.settings.mini_batch // 5)
                ),
            )
            self.config = InitialModelConfig(
                n_classes=self.settings.classes,
                box_px=box,
                pixel_size_a=pixel_size_a * box_in / box,
                particle_diameter_a=self.settings.particle_diameter_a,
                symmetry=self.settings.symmetry,
                angular_step_deg=self.settings.angular_step_deg,
                schedule=schedule,
            )
        if self.seen.size < self.pool.size:
            seen = np.zeros(self.pool.size, dtype=bool)
            seen[: self.seen.size] = self.seen
            self.seen = seen

    def _posed(self, rows: np.ndarray) -> PosedParticles:
        """The pool rows ``rows`` at the working box, poses unknown (identity);
        ``subset`` is each row's half (pool index parity + 1)."""
        assert self.config is not None
        stack = self.pool.stack(rows)
        images = stack.images
        if images.shape[-1] != self.config.box_px:
            images = resample_images(images, self.config.box_px)
        n = len(rows)
        return PosedParticles.from_arrays(
            images,
            pixel_size_a=self.config.pixel_size_a,
            rotations=np.broadcast_to(np.eye(3), (n, 3, 3)),
            defocus_u_a=stack.defocus_u_a,
            defocus_v_a=stack.defocus_v_a,
            astigmatism_angle_deg=stack.astigmatism_angle_deg,
            phase_shift_deg=stack.phase_shift_deg,
            voltage_kv=stack.voltage_kv,
            cs_mm=stack.cs_mm,
            amplitude_contrast=stack.amplitude_contrast,
            subset=(np.asarray(rows) % 2 + 1).astype(np.int64),
        )

    # -- learning --------------------------------------------------------------
    def ready(self) -> bool:
        """Whether :meth:`step` would run a mini-batch now."""
        if self.config is None:
            return False
        if self.state is None:
            return self.pool_size >= self.settings.start_particles
        if self.pool_size < 2:
            return False
        budget = self.settings.max_passes * self.pool_size
        return self.state.particles_processed < budget

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` pool rows, even and odd interleaved (position parity = pool
        parity: the half-set split of the model), half unseen when possible."""
        index = self.pool.active_rows()
        per_half = max(1, size // 2)
        halves = []
        for parity in (0, 1):
            members = index[index % 2 == parity]
            unseen = members[~self.seen[members]]
            seen = members[self.seen[members]]
            n_new = min(
                unseen.size,
                max(round(NEW_FRACTION * per_half), per_half - seen.size),
            )
            new = rng.choice(unseen, n_new, replace=False)
            old = rng.choice(seen, min(per_half - n_new, seen.size), replace=False)
            halves.append(np.sort(np.concatenate([new, old]).astype(np.int64)))
        count = min(halves[0].size, halves[1].size)
        order = np.empty(2 * count, dtype=np.int64)
        order[0::2], order[1::2] = halves[0][:count], halves[1][:count]
        return order

    def _start(self) -> None:
        """The first state: random poses for a first draw, one blob per class."""
        assert self.config is not None
        rng = np.random.default_rng(self.seed)
        size = minibatch_size(0, self.pool_size, self.config.schedule)
        order = self._draw(rng, max(size, 2 * self.config.n_classes))
        self.state = initialise_state(self.config, self._posed(order), rng)

    def step(self) -> bool:
        """One mini-batch if :meth:`ready`; return whether one ran."""
        if not self.ready():
            return False
        assert self.config is not None
        if self.state is None:
            self._start()
        assert self.state is not None
        state = self.state
        rng = restore_rng(state)
        size = minibatch_size(
            state.minibatch_index, self.pool_size, self.config.schedule
        )
        order = self._draw(rng, size)
        if order.size < 2:
            return False
        state = dataclasses.replace(state, rng_state=rng_state_of(rng))
        self.state = vdam_step(
            self.config, state, self._posed(order), rows=np.arange(order.size)
        )
        self.seen[order] = True
        self.minibatches_since_snapshot += 1
        return True

    # -- outputs ---------------------------------------------------------------
    def snapshot(self) -> Class3dSnapshot:
        """Give a sample of at most ``snapshot_sample`` active pool rows their
        best pose and class (drawn from the seed and the mini-batch index, so the
        run's random state is untouched) and write the iteration's files
        (:func:`pipelines.class3d.snapshot.write_initial_model_snapshot`)."""
        if self.state is None or self.config is None:
            raise StageInputError(self.folder, "state", None, "no mini-batch run yet")
        config, state = self.config, self.state
        rows = self.pool.active_rows()
        limit = self.settings.snapshot_sample
        if rows.size > limit:
            draw = np.random.default_rng([self.seed, state.minibatch_index, 3])
            rows = np.sort(draw.choice(rows, limit, replace=False))
        assignment = assign_particles(config, state, self._posed(rows))
        self.folder.mkdir(parents=True, exist_ok=True)
        files = write_initial_model_snapshot(
            self.folder,
            config=config,
            state=state,
            optics=self.pool.optics,
            particles=self.pool.rows_table(rows),
            assignment=assignment,
            keep_iterations=KEEP_ITERATIONS,
        )
        self.minibatches_since_snapshot = 0
        payload: dict[str, Any] = {
            "schema": SCHEMA,
            "iteration": state.minibatch_index,
            "particles_seen": self.particles_seen,
            "particles_processed": state.particles_processed,
            "pool_particles": self.pool_size,
            "particles_assigned": int(rows.size),
            "classes": config.n_classes,
            "symmetry": config.symmetry,
            "box_px": config.box_px,
            "pixel_size_a": round(config.pixel_size_a, 4),
            "class_fractions": [round(float(f), 4) for f in state.class_fractions],
            "resolution_a": round(float(files.resolution_a.min()), 2),
            "class_resolution_a": [round(float(r), 2) for r in files.resolution_a],
            "orientation_coverage": round(files.coverage, 4),
            "largest_class": files.largest_class + 1,
            "initial_model": str(files.initial_model),
            "maps": [str(p) for p in files.maps],
            "slices_png": [str(p) for p in files.slices],
            "fsc_png": str(files.fsc_png),
            "directions_png": str(files.directions_png),
            "data_star": str(files.data_star),
            "model_star": str(files.model_star),
        }
        return Class3dSnapshot(
            maps=files.maps,
            slices_png=files.slices,
            fsc_png=files.fsc_png,
            directions_png=files.directions_png,
            data_star=files.data_star,
            model_star=files.model_star,
            initial_model=files.initial_model,
            payload=payload,
        )

    # -- checkpoint ------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Write settings, seed, the model's config and state, the seen mask and
        the pool rows to ``<folder>/actor_checkpoint.npz`` atomically."""
        started = self.config is not None and self.state is not None
        extra: dict[str, Any] = {"seen": self.seen}
        if started:
            assert self.config is not None
            extra["model_config"] = np.array(self.config.to_json())
        return write_actor_checkpoint(
            self.folder,
            settings=self.settings,
            seed=self.seed,
            since_snapshot=self.minibatches_since_snapshot,
            pool=self.pool,
            state=self.state if started else None,
            extra=extra,
        )

    @classmethod
    def resume(
        cls, folder: str | Path, *, project: str | Path | None = None
    ) -> Class3dActor | None:
        """The actor saved in ``folder``, or None when there is no checkpoint
        (``project``: where relative stack names are looked up; default the one
        saved).  The pool's images are read again."""
        saved = read_actor_checkpoint(folder, "class3d")
        if saved is None:
            return None
        data = saved.data
        try:
            settings = Class3dSettings(**saved.settings)
            seen = np.asarray(data["seen"], dtype=bool)
            config = (
                InitialModelConfig.from_json(str(data["model_config"]))
                if "model_config" in data
                else None
            )
            state = (
                None
                if config is None
                else InitialModelState(**state_fields(data, InitialModelState))
            )
        except (KeyError, ValueError, TypeError) as error:
            raise saved.not_one(error, "class3d") from error
        pool = ParticlePool.from_arrays(data, project, Path(folder) / POOL_FOLDER)
        actor = cls(folder, settings, seed=saved.seed, pool=pool)
        if config is not None:
            actor.config, actor.state = config, state
        actor.seen = seen
        actor._sync_pool()
        actor.minibatches_since_snapshot = saved.since_snapshot
        return actor
