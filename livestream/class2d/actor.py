"""The online 2D classifier of a session: one VDAM run that keeps learning as
particles arrive, checkpointed atomically and resumed after a restart.

The daemon owns one :class:`Class2dActor` per session and calls, from a worker
thread (every call is synchronous and CPU-bound)::

    actor = Class2dActor.resume(folder) or Class2dActor(folder, settings, seed=0)
    actor.feed(extract_star)          # after each Extract batch; new rows only
    while actor.step():               # one mini-batch each; False = wait for data
        if actor.minibatches_since_snapshot >= settings.snapshot_every:
            info = actor.snapshot()   # files + info.payload for the class2d event
            actor.checkpoint()

The pool is every particle fed so far, in arrival order.  Mini-batches are drawn
from it with the state's own random generator: ``new_fraction`` of each batch from
particles never seen (when there are any), the rest uniformly from the seen ones,
equal numbers from even and odd pool indices (the half-sets stay disjoint across
mini-batches).  Batch size follows the schedule on the *current* pool size; the
first update waits for ``min_pool`` particles; stepping pauses once the run has
processed ``max_passes`` times the pool, and resumes as new particles arrive.  The
checkpoint holds the full classifier state and the pool's STAR rows, so a resumed
actor continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
from pipelines.class2d import (
    Class2dConfig,
    Class2dState,
    Schedule,
    assign_particles,
    initialise_state,
    vdam_step,
)
from pipelines.class2d.box import (
    to_working_box,
    working_box_px,
    working_pixel_size_a,
)
from pipelines.class2d.montage import class2d_payload
from pipelines.class2d.outputs import write_class2d_snapshot
from pipelines.class2d.ranker import (
    DEFAULT_PARTICLE_OUTLIER_MAD,
    DEFAULT_THRESHOLD,
    rank_classes,
)
from pipelines.class2d.schedule import minibatch_size
from pipelines.class2d.state import restore_rng
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import rng_state_of

__all__ = ["CHECKPOINT_NAME", "ActorSettings", "Class2dActor", "SnapshotInfo"]

KEEP_ITERATIONS = 3  # snapshots of older iterations are deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorSettings:
    """Classifier parameters (box and pixel size come from the first particles)."""

    n_classes: int = 50
    min_pool: int = 1000
    new_fraction: float = 0.5
    max_passes: float = 3.0
    snapshot_every: int = 20
    snapshot_sample: int | None = 20_000  # particles a snapshot assigns; None: all
    score_threshold: float = DEFAULT_THRESHOLD
    particle_outlier_mad: float | None = DEFAULT_PARTICLE_OUTLIER_MAD
    psi_step_deg: float = 6.0
    offset_range_px: float = 5.0
    max_resolution_a: float | None = None
    max_particles_per_class: int | None = None
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        if not 0.0 <= self.new_fraction <= 1.0:
            raise StageInputError(
                "<settings>", "new_fraction", self.new_fraction, "must be in [0, 1]"
            )
        if self.min_pool < 2:
            raise StageInputError("<settings>", "min_pool", self.min_pool, ">= 2")


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInfo:
    """Paths written by :meth:`Class2dActor.snapshot` and the ``class2d`` event
    body (``payload``; schema ``livestream.class2d/1``, see docs/class2d.md)."""

    classes_mrcs: Path
    model_star: Path
    data_star: Path
    selected_star: Path
    montage_png: Path
    payload: dict[str, Any]


class Class2dActor:
    """One session's online classifier; see the module docstring."""

    def __init__(
        self,
        folder: str | Path,
        settings: ActorSettings,
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
        self.config: Class2dConfig | None = None
        self.state: Class2dState | None = None
        self.minibatches_since_snapshot = 0
        self._sync_pool()

    @property
    def pool_size(self) -> int:
        """Particles the classifier learns from (the pool's rows not retired)."""
        return self.pool.n_active

    def feed(self, particles_star: str | Path) -> int:
        """Add the rows of ``particles_star`` not in the pool yet; return how many."""
        added = self.pool.feed(particles_star)
        self._sync_pool()
        return added

    def _sync_pool(self) -> None:
        """Make the config on the first particles; grow the seen mask."""
        if self.config is None and self.pool.size:
            box_px = int(self.pool.box[-1])  # odd: classified at box + 1
            pixel_size_a = float(self.pool.optics.iloc[0]["rlnImagePixelSize"])
            self.config = Class2dConfig(
                n_classes=self.settings.n_classes,
                box_px=working_box_px(box_px),
                pixel_size_a=working_pixel_size_a(pixel_size_a, box_px),
                psi_step_deg=self.settings.psi_step_deg,
                offset_range_px=self.settings.offset_range_px,
                max_resolution_a=self.settings.max_resolution_a,
                max_particles_per_class=self.settings.max_particles_per_class,
                schedule=self.settings.schedule,
            )
        if self.state is not None and self.state.seen.size < self.pool.size:
            seen = np.zeros(self.pool.size, dtype=bool)
            seen[: self.state.seen.size] = self.state.seen
            self.state = dataclasses.replace(self.state, seen=seen)

    # -- learning --------------------------------------------------------------
    def ready(self) -> bool:
        """Whether :meth:`step` would run a mini-batch now."""
        if self.pool_size < self.settings.min_pool or self.config is None:
            return False
        if self.state is None:
            return True
        budget = self.settings.max_passes * self.pool_size
        return self.state.particles_processed < budget

    def _draw_batch(self, rng: np.random.Generator) -> np.ndarray:
        """Pool indices, interleaved even/odd so stack parity = pool parity
        (retired rows are never drawn)."""
        assert self.config is not None
        assert self.state is not None
        size = minibatch_size(
            self.state.minibatch_index, self.pool_size, self.config.schedule
        )
        index = self.pool.active_rows()
        halves = []
        per_half = max(1, min(size // 2, (self.pool_size) // 2))
        for parity in (0, 1):
            members = index[index % 2 == parity]
            unseen = members[~self.state.seen[members]]
            seen = members[self.state.seen[members]]
            n_new = min(
                unseen.size,
                max(round(self.settings.new_fraction * per_half), per_half - seen.size),
            )
            new = rng.choice(unseen, n_new, replace=False)
            old = rng.choice(seen, min(per_half - n_new, seen.size), replace=False)
            halves.append(np.sort(np.concatenate([new, old]).astype(np.int64)))
        count = min(halves[0].size, halves[1].size)
        order = np.empty(2 * count, dtype=np.int64)
        order[0::2], order[1::2] = halves[0][:count], halves[1][:count]
        return order

    def step(self) -> bool:
        """One mini-batch if :meth:`ready`; return whether one ran."""
        if not self.ready():
            return False
        assert self.config is not None
        if self.state is None:
            self.state = initialise_state(
                self.config,
                to_working_box(self.pool.stack(self.pool.active_rows())),
                np.random.default_rng(self.seed),
            )
        state = self.state
        rng = restore_rng(state)
        order = self._draw_batch(rng)
        n = order.size
        # the core draws all n particles of this stack (min = max = n) and its
        # class-fraction cap is per data set: scale the cap to the batch
        cap = self.config.max_particles_per_class
        config = dataclasses.replace(
            self.config,
            schedule=dataclasses.replace(
                self.config.schedule,
                initial_min=n,
                initial_max=n,
                final_min=n,
                final_max=n,
            ),
            max_particles_per_class=None
            if cap is None
            else max(1, round(cap * n / self.pool_size)),
        )
        batch_state = dataclasses.replace(
            state, seen=np.zeros(n, dtype=bool), rng_state=rng_state_of(rng)
        )
        new = vdam_step(config, batch_state, to_working_box(self.pool.stack(order)))
        seen = state.seen.copy()
        seen[order] = True
        self.state = dataclasses.replace(new, seen=seen)
        self.minibatches_since_snapshot += 1
        return True

    # -- outputs ---------------------------------------------------------------
    def snapshot(self, *, full: bool = False) -> SnapshotInfo:
        """Assign pool particles (an E-step), rank the classes and write
        ``run_itNNN_{classes.mrcs,model,data,optimiser}.star`` (RELION's names,
        the newest three iterations kept, ``run_*`` links to the newest),
        ``run_selected.star`` (ranked selection) and ``run_montage.png``.

        The particles assigned are a random sample of at most
        ``settings.snapshot_sample`` active rows (drawn from the seed and the
        mini-batch index, so the run's own random state is untouched; in pool
        order), or every active row with ``full`` or when the pool is no larger;
        ``run_data.star`` and ``run_selected.star`` hold the assigned rows."""
        if self.state is None or self.config is None:
            raise StageInputError(self.folder, "state", None, "no mini-batch run yet")
        config, state = self.config, self.state
        rows = self.pool.active_rows()  # retired rows are not written
        limit = self.settings.snapshot_sample
        if not full and limit is not None and rows.size > limit:
            draw = np.random.default_rng([self.seed, state.minibatch_index, 2])
            rows = np.sort(draw.choice(rows, limit, replace=False))
        particles = to_working_box(self.pool.stack(rows))
        assignment = assign_particles(config, state, particles)
        ranking = rank_classes(
            config,
            state,
            assignment,
            threshold=self.settings.score_threshold,
            particles=particles,
            particle_outlier_mad=self.settings.particle_outlier_mad,
        )
        outputs = write_class2d_snapshot(
            self.folder,
            config,
            state,
            assignment,
            self.pool.optics,
            self.pool.rows_table(rows),
            ranking=ranking,
            float16=False,
            output_box_px=int(self.pool.box[-1]),
            keep_iterations=KEEP_ITERATIONS,
        )
        self.minibatches_since_snapshot = 0
        payload = class2d_payload(
            state,
            ranking,
            classes_mrcs=outputs.classes_mrcs,
            montage_png=outputs.montage_png,
            selected_star=outputs.selected_star,
        )
        payload["particles_assigned"] = int(rows.size)
        payload["pool_particles"] = self.pool_size
        return SnapshotInfo(
            classes_mrcs=outputs.classes_mrcs,
            model_star=outputs.model_star,
            data_star=outputs.data_star,
            selected_star=outputs.selected_star,
            montage_png=outputs.montage_png,
            payload=payload,
        )

    # -- checkpoint ------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Write settings, seed, classifier state and the pool rows to
        ``<folder>/actor_checkpoint.npz`` atomically."""
        return write_actor_checkpoint(
            self.folder,
            settings=self.settings,
            seed=self.seed,
            since_snapshot=self.minibatches_since_snapshot,
            pool=self.pool,
            state=self.state,
        )

    @classmethod
    def resume(
        cls, folder: str | Path, *, project: str | Path | None = None
    ) -> Class2dActor | None:
        """The actor saved in ``folder``, or None when there is no checkpoint
        (``project``: where relative stack names are looked up for new rows;
        default the one saved).  The pool's images are read again."""
        saved = read_actor_checkpoint(folder, "class2d")
        if saved is None:
            return None
        try:
            raw = dict(saved.settings)
            raw["schedule"] = Schedule(**raw["schedule"])
            settings = ActorSettings(**raw)
            state = (
                Class2dState(**state_fields(saved.data, Class2dState))
                if "state_references" in saved.data
                else None
            )
        except (KeyError, ValueError, TypeError) as error:
            raise saved.not_one(error, "class2d") from error
        pool = ParticlePool.from_arrays(saved.data, project, Path(folder) / POOL_FOLDER)
        actor = cls(folder, settings, seed=saved.seed, pool=pool)
        actor.state = state
        actor.minibatches_since_snapshot = saved.since_snapshot
        return actor
