"""The staged 3D plan for large particle sets (cryoSPARC's recommendation).

1. **Ab-initio on a subset.**  One VDAM initial model per entry of
   ``class_counts`` (1, 3 and 6 classes) on a random subset of the particles
   (:func:`default_subset_size`: all of a small set, at most 100,000).  The cost
   of a VDAM run is its schedule (mini-batches of at most 3,000 particles), not
   the subset's size; the subset bounds the memory its images take and the
   mini-batch sizes, which grow with the set (``final_fraction``).
2. **Heterogeneous refinement of all particles.**  3D classification
   (:func:`classify_particles`) of every particle against the union of the runs'
   maps, junk classes included: as in cryoSPARC's heterogeneous refinement, a
   junk reference is a decoy that draws junk particles away from the good ones.
   With ``junk_decoy`` one more reference, an empty map, is added: an image
   without a particle fits it better than any projection, and once its class
   is rebuilt from such images it stays their class (without it, pure-noise
   particles joined a real class in our tests).  Classes are not substituted
   (``substitute_fraction = 0``): a small class stays itself, as in
   cryoSPARC's heterogeneous refinement, and the decoy stays the decoy
   (with substitution it became a copy of the largest class in one of our
   runs and drew 269 real particles).  Its class is dropped.
3. **Class selection.**  A class is kept when it is not the junk decoy's,
   holds at least ``min_class_fraction`` of the particles (and
   ``min_class_particles``), its particles' poses are certain (the median of
   their largest posterior, RELION's ``rlnMaxValueProbDistribution``, at least
   ``min_certainty_ratio`` of the most certain class's: images of nothing fit
   every pose about as well: 0.16 against 0.75-0.85 in our test, 0.63
   against 1.0 in the benchmark at SNR 1; a class of noise images has
   half-set FSCs nearly as good as a real class's, both halves being aligned
   to one shared map), and its half-set resolution is within ``max_resolution_ratio`` of the best kept
   class's.  Kept classes whose maps superpose (:func:`align_maps`, both hands)
   with a correlation of at least ``merge_correlation`` are one conformation
   found by two runs: the smaller joins the larger.
4. **Gold-standard refinement** (:func:`refine`) of each kept group's particles
   from its class map; or, with ``skip_align_classes`` >= 2 (the default, 2),
   RELION's practice after a consensus refinement instead:
5. **Conformations at fixed poses.**  One consensus refinement of every kept
   particle (the kept groups together: junk dropped) from the largest kept
   class's map, then classification without alignment
   (:func:`classify_without_alignment`, RELION's ``--skip_align``) of those
   particles at its poses into ``skip_align_classes`` classes, and a
   gold-standard refinement of each of those classes holding at least
   ``min_class_fraction`` of them (and ``min_class_particles``) from its map.
   The ab-initio classes and the heterogeneous step found junk reliably in our
   benchmark but not the two conformations (30-67 % right); at fixed poses the
   pair separates (docs/class3d.md).

Everything runs through those public functions; this module only chooses the
subsets and references between them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pipelines.class3d.align import align_maps, align_symmetry
from pipelines.class3d.classify import (
    Classification,
    ClassificationOptions,
    classification_config,
    classify_particles,
)
from pipelines.class3d.refine import RefineConfig, RefineResult, refine
from pipelines.class3d.skip_align import (
    DEFAULT_RESOLUTION_A,
    SkipAlignClassification,
    SkipAlignOptions,
    classify_without_alignment,
)
from pipelines.class3d.state import (
    DEFAULT_SCHEDULE,
    InitialModelConfig,
    InitialModelState,
)
from pipelines.class3d.vdam import initialise_state, run_minibatches
from pipelines.errors import StageInputError
from pipelines.reconstruct.particles import PosedParticles
from pipelines.reconstruct.symmetry import symmetry_matrices

__all__ = [
    "DEFAULT_CLASS_COUNTS",
    "DEFAULT_MAX_SUBSET",
    "ClassDecision",
    "ConformationSplit",
    "InitialModelRun",
    "RefinedGroup",
    "StagedPlan",
    "StagedPlanConfig",
    "default_subset_size",
    "half_set_resolution_a",
    "run_staged_plan",
    "select_classes",
    "take_particles",
]

DEFAULT_CLASS_COUNTS = (1, 3, 6)
DEFAULT_MAX_SUBSET = 100_000  # cryoSPARC's "e.g. 100,000 particles"


def default_subset_size(n_particles: int) -> int:
    """The ab-initio subset: every particle of a set up to 100,000, else 100,000."""
    return min(n_particles, DEFAULT_MAX_SUBSET)


@dataclass(frozen=True, slots=True, kw_only=True)
class StagedPlanConfig:
    """What the plan runs (defaults: the commands' own)."""

    class_counts: tuple[int, ...] = DEFAULT_CLASS_COUNTS
    subset_size: int | None = None
    symmetry: str = "C1"
    particle_diameter_a: float | None = None
    n_minibatches: int = DEFAULT_SCHEDULE.n_minibatches
    class_iterations: int = 15
    class_angular_step_deg: float = 7.5
    class_ini_high_a: float = 60.0
    min_class_fraction: float = 0.05
    min_class_particles: int = 20
    max_resolution_ratio: float = 1.5
    merge_correlation: float = 0.95
    min_certainty_ratio: float = 0.75
    junk_decoy: bool = True
    refine_ini_high_a: float = 40.0
    refine_max_iterations: int = 20
    skip_align_classes: int = 2
    skip_align_starts: int = 4
    skip_align_iterations: int = 30
    skip_align_resolution_a: float = DEFAULT_RESOLUTION_A

    def __post_init__(self) -> None:
        if not self.class_counts or min(self.class_counts) < 1:
            raise StageInputError(
                "<argument>", "classes", self.class_counts, "need one or more, >= 1"
            )
        symmetry_matrices(self.symmetry)  # an unknown group fails here
        if self.subset_size is not None and self.subset_size < 2:
            raise StageInputError(
                "<argument>", "subset", self.subset_size, "must be >= 2"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialModelRun:
    """One ab-initio run: its config, final state and wall seconds."""

    config: InitialModelConfig
    state: InitialModelState
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassDecision:
    """One class of the classification: its size, half-set resolution, pose
    certainty (median largest posterior of its particles), whether it is kept,
    and why (``"kept"``, ``"small"``, ``"uncertain poses"``, ``"low resolution"``,
    ``"merged"``, ``"decoy"``); ``group`` the kept class it is refined with (itself when
    kept, -1 when dropped); ``correlation``: the best correlation of its map with
    a larger kept class's (None when dropped or the first kept)."""

    index: int
    count: int
    fraction: float
    resolution_a: float
    certainty: float
    decision: str
    group: int
    correlation: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RefinedGroup:
    """A kept class (and the classes merged into it): the particles' ``rows``
    in the whole set, the refinement and its wall seconds."""

    class_index: int
    merged: tuple[int, ...]
    rows: np.ndarray
    config: RefineConfig
    result: RefineResult
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConformationSplit:
    """Step 5: the kept particles (``rows`` in the whole set), their consensus
    refinement and its config, their classification without alignment at its
    poses and that classification's config, and the wall seconds of both."""

    rows: np.ndarray
    consensus_config: RefineConfig
    consensus: RefineResult
    classification_config: InitialModelConfig
    classification: SkipAlignClassification
    consensus_seconds: float
    classification_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StagedPlan:
    """What the plan did: the subset, the ab-initio runs, the references' origin
    (run, class) per class of the classification ((-1, 0): the junk decoy), the classification, the
    decisions, the step-5 ``split`` (None when not run), the refinements (of the
    kept groups, or of the split's classes: ``RefinedGroup.class_index`` is then
    the split's class) and the wall seconds of each stage."""

    subset_rows: np.ndarray
    initial_models: list[InitialModelRun]
    reference_origin: list[tuple[int, int]]
    classification_config: InitialModelConfig
    classification: Classification
    decisions: list[ClassDecision]
    refinements: list[RefinedGroup]
    seconds: dict[str, float]
    split: ConformationSplit | None = None


def half_set_resolution_a(
    config: InitialModelConfig, state: InitialModelState
) -> np.ndarray:
    """Per class, the first shell where its half-set FSC falls below 0.143, in Å,
    not held to the search's limit (``outputs.class_resolution_a`` is, so that
    every class reads the same once the limit binds): a noise class's halves
    agree on little, a real class's beyond the limit too."""
    fsc = state.half_fsc[:, 1:]
    below = fsc < 0.143
    shell = np.where(below.any(axis=1), np.argmax(below, axis=1) + 1, fsc.shape[1])
    return np.asarray(config.box_px * config.pixel_size_a / np.maximum(shell, 1))


def take_particles(particles: PosedParticles, rows: np.ndarray) -> PosedParticles:
    """The particles ``rows`` of a set (every per-particle array sliced)."""
    fields = {
        f.name: getattr(particles, f.name)[rows]
        for f in dataclasses.fields(particles)
        if f.name != "pixel_size_a"
    }
    return PosedParticles(pixel_size_a=particles.pixel_size_a, **fields)


def select_classes(
    counts: np.ndarray,
    resolution_a: np.ndarray,
    maps: np.ndarray,
    *,
    certainty: np.ndarray,
    config: StagedPlanConfig,
    pixel_size_a: float,
    decoy: int | None = None,
) -> list[ClassDecision]:
    """The junk rule (module docstring, step 3) on the classes' particle
    ``counts`` ``(K,)``, half-set ``resolution_a`` ``(K,)`` and ``maps``
    ``(K, N, N, N)`` and pose ``certainty`` ``(K,)`` (the median of its particles'
    largest posterior); class ``decoy`` (the junk decoy's) is dropped."""
    total = max(int(counts.sum()), 1)
    big = (counts >= config.min_class_fraction * total) & (
        counts >= config.min_class_particles
    )
    if decoy is not None:
        big[decoy] = False  # its resolution is no measure of the others
    best = float(resolution_a[big].min()) if big.any() else np.inf
    sharp = resolution_a <= config.max_resolution_ratio * best
    most_certain = float(certainty[big].max()) if big.any() else 0.0
    certain = certainty >= config.min_certainty_ratio * most_certain
    decisions: dict[int, ClassDecision] = {}
    kept: list[int] = []
    for k in np.argsort(-counts, kind="stable"):  # a loop over classes, largest first
        k = int(k)
        decision, group, cc = "kept", k, None
        if k == decoy or not (big[k] and certain[k] and sharp[k]):
            decision = (
                "decoy"
                if k == decoy
                else "small"
                if not big[k]
                else "uncertain poses"
                if not certain[k]
                else "low resolution"
            )
            group = -1
        else:
            match = _most_similar(maps, k, kept, pixel_size_a)
            cc = None if match is None else match[1]
            if match is not None and match[1] >= config.merge_correlation:
                decision, group = "merged", match[0]
            else:
                kept.append(k)
        decisions[k] = ClassDecision(
            index=k,
            count=int(counts[k]),
            fraction=float(counts[k] / total),
            resolution_a=float(resolution_a[k]),
            certainty=float(certainty[k]),
            decision=decision,
            group=group,
            correlation=cc,
        )
    return [decisions[k] for k in range(len(counts))]


def _pose_certainty(
    labels: np.ndarray, classification: Classification, n_classes: int
) -> np.ndarray:
    """Per class, the median of its particles' largest posterior (0 if empty)."""
    best = classification.assignment.max_posterior
    return np.array(
        [
            float(np.median(best[labels == k])) if (labels == k).any() else 0.0
            for k in range(n_classes)  # a loop over classes
        ]
    )


def _most_similar(
    maps: np.ndarray, k: int, kept: list[int], pixel_size_a: float
) -> tuple[int, float] | None:
    """The kept class whose map best superposes on class ``k``'s, and the
    correlation; None when nothing is kept yet."""
    best: tuple[int, float] | None = None
    for j in kept:  # a loop over the kept classes (a few)
        cc = align_maps(maps[k], maps[j], pixel_size_a=pixel_size_a).correlation
        if best is None or cc > best[1]:
            best = (j, float(cc))
    return best


def _initial_models(
    particles: PosedParticles, config: StagedPlanConfig, seed: int
) -> list[InitialModelRun]:
    runs = []
    schedule = replace(DEFAULT_SCHEDULE, n_minibatches=config.n_minibatches)
    for i, k in enumerate(config.class_counts):  # a loop over the ab-initio runs
        start = time.perf_counter()
        model_config = InitialModelConfig(
            n_classes=k,
            box_px=particles.box_px,
            pixel_size_a=particles.pixel_size_a,
            particle_diameter_a=config.particle_diameter_a,
            schedule=schedule,
        )
        state = initialise_state(
            config=model_config,
            particles=particles,
            rng=np.random.default_rng([seed, 1, i]),
        )
        state = run_minibatches(config=model_config, state=state, particles=particles)
        runs.append(
            InitialModelRun(
                config=model_config, state=state, seconds=time.perf_counter() - start
            )
        )
    return runs


def _refine_group(
    particles: PosedParticles,
    rows: np.ndarray,
    reference: np.ndarray,
    config: StagedPlanConfig,
) -> tuple[RefineConfig, RefineResult]:
    if config.symmetry.upper() != "C1":  # the class map onto the group's axes
        _, reference = align_symmetry(
            reference, config.symmetry, pixel_size_a=particles.pixel_size_a
        )
    members = take_particles(particles, rows)
    # halves by position in the group: balanced whatever the input's subsets
    members = replace(members, subset=np.where(np.arange(len(rows)) % 2 == 0, 1, 2))
    refine_config = RefineConfig(
        box_px=particles.box_px,
        pixel_size_a=particles.pixel_size_a,
        symmetry=config.symmetry,
        particle_diameter_a=config.particle_diameter_a,
        initial_lowpass_a=config.refine_ini_high_a,
        max_iterations=config.refine_max_iterations,
    )
    return refine_config, refine(
        particles=members, reference=reference, config=refine_config
    )


def _refine_kept(
    particles: PosedParticles,
    decisions: list[ClassDecision],
    labels: np.ndarray,
    maps: np.ndarray,
    config: StagedPlanConfig,
) -> list[RefinedGroup]:
    """Step 4: each kept group's particles refined from its class map."""
    refinements = []
    for d in decisions:  # a loop over the kept classes
        if d.decision != "kept":
            continue
        merged = tuple(e.index for e in decisions if e.group == d.index)
        rows = np.nonzero(np.isin(labels, merged))[0]
        t0 = time.perf_counter()
        refine_config, result = _refine_group(particles, rows, maps[d.index], config)
        refinements.append(
            RefinedGroup(
                class_index=d.index,
                merged=tuple(m for m in merged if m != d.index),
                rows=rows,
                config=refine_config,
                result=result,
                seconds=time.perf_counter() - t0,
            )
        )
    return refinements


def _split_conformations(
    particles: PosedParticles,
    decisions: list[ClassDecision],
    labels: np.ndarray,
    maps: np.ndarray,
    config: StagedPlanConfig,
    seed: int,
) -> ConformationSplit | None:
    """Step 5 up to the classification; None when too few particles are kept."""
    kept = [d for d in decisions if d.decision == "kept"]
    groups = [d.index for d in decisions if d.group >= 0]
    rows = np.nonzero(np.isin(labels, groups))[0]
    if not kept or len(rows) < config.skip_align_classes * config.min_class_particles:
        return None
    largest = max(kept, key=lambda d: d.count).index
    t0 = time.perf_counter()
    consensus_config, consensus = _refine_group(particles, rows, maps[largest], config)
    consensus_s = time.perf_counter() - t0
    posed = replace(
        take_particles(particles, rows),
        rotations=consensus.rotations,
        origin_px=consensus.origin_px,
        subset=consensus.subset,
    )
    class_config = classification_config(
        config.skip_align_classes,
        box_px=particles.box_px,
        pixel_size_a=particles.pixel_size_a,
        particle_diameter_a=config.particle_diameter_a,
    )
    t0 = time.perf_counter()
    classification = classify_without_alignment(
        class_config,
        posed,
        rng=np.random.default_rng([seed, 3]),
        options=SkipAlignOptions(
            n_iterations=config.skip_align_iterations,
            n_starts=config.skip_align_starts,
            resolution_a=config.skip_align_resolution_a,
        ),
    )
    return ConformationSplit(
        rows=rows,
        consensus_config=consensus_config,
        consensus=consensus,
        classification_config=class_config,
        classification=classification,
        consensus_seconds=consensus_s,
        classification_seconds=time.perf_counter() - t0,
    )


def _refine_split(
    particles: PosedParticles, split: ConformationSplit, config: StagedPlanConfig
) -> list[RefinedGroup]:
    """Step 5's refinements: each class of the split holding at least
    ``min_class_fraction`` of its particles (and ``min_class_particles``)."""
    labels = split.classification.assignment.class_index
    counts = np.bincount(labels, minlength=split.classification_config.n_classes)
    refinements = []
    for k in np.argsort(-counts, kind="stable"):  # a loop over classes, largest first
        k = int(k)
        small = counts[k] < config.min_class_fraction * len(labels)
        if small or counts[k] < config.min_class_particles:
            continue
        rows = split.rows[labels == k]
        t0 = time.perf_counter()
        refine_config, result = _refine_group(
            particles, rows, split.classification.state.maps[k], config
        )
        refinements.append(
            RefinedGroup(
                class_index=k,
                merged=(),
                rows=rows,
                config=refine_config,
                result=result,
                seconds=time.perf_counter() - t0,
            )
        )
    return refinements


def run_staged_plan(
    particles: PosedParticles,
    *,
    config: StagedPlanConfig | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> StagedPlan:
    """Run the staged plan (module docstring) on ``particles`` (poses are not
    used: each stage searches them).  ``on_progress(done, total)`` after each
    ab-initio run, the classification and the refinements."""
    config = config or StagedPlanConfig()
    n = particles.n_particles
    size = min(n, config.subset_size or default_subset_size(n))
    seconds: dict[str, float] = {}
    rng = np.random.default_rng([seed, 0])
    subset_rows = np.sort(rng.choice(n, size=size, replace=False))
    subset = particles if size == n else take_particles(particles, subset_rows)
    total = len(config.class_counts) + 2

    def progress(done: int) -> None:
        if on_progress is not None:
            on_progress(done, total)

    runs = _initial_models(subset, config, seed)
    for run in runs:  # a loop over the ab-initio runs
        seconds[f"initial_model_k{run.config.n_classes}"] = run.seconds
    progress(len(runs))
    origin = [(i, k) for i, run in enumerate(runs) for k in range(run.state.n_classes)]
    references = np.concatenate([run.state.maps for run in runs])
    if config.junk_decoy:  # an empty map: what an empty image fits best
        origin.append((-1, 0))
        references = np.concatenate([references, np.zeros_like(references[:1])])
    start = time.perf_counter()
    class_config = classification_config(
        len(references),
        box_px=particles.box_px,
        pixel_size_a=particles.pixel_size_a,
        particle_diameter_a=config.particle_diameter_a,
        angular_step_deg=config.class_angular_step_deg,
        initial_resolution_a=config.class_ini_high_a,
    )
    classification = classify_particles(
        config=class_config,
        references=references,
        particles=particles,
        rng=np.random.default_rng([seed, 2]),
        # no substitution of small classes: it would turn the decoy (and any
        # junk class) into a copy of the largest class
        options=ClassificationOptions(
            n_iterations=config.class_iterations, substitute_fraction=0.0
        ),
    )
    seconds["class3d"] = time.perf_counter() - start
    progress(len(runs) + 1)
    labels = classification.assignment.class_index
    counts = np.bincount(labels, minlength=len(references))
    decisions = select_classes(
        counts,
        half_set_resolution_a(class_config, classification.state),
        classification.state.maps,
        certainty=_pose_certainty(labels, classification, len(references)),
        config=config,
        pixel_size_a=particles.pixel_size_a,
        decoy=len(references) - 1 if config.junk_decoy else None,
    )
    split = None
    if config.skip_align_classes >= 2:
        split = _split_conformations(
            particles, decisions, labels, classification.state.maps, config, seed
        )
    if split is not None:
        seconds["consensus_refine3d"] = split.consensus_seconds
        seconds["class3d_skip_align"] = split.classification_seconds
    start = time.perf_counter()
    if split is not None:
        refinements = _refine_split(particles, split, config)
    else:
        refinements = _refine_kept(
            particles, decisions, labels, classification.state.maps, config
        )
    seconds["refine3d"] = time.perf_counter() - start
    progress(total)
    return StagedPlan(
        subset_rows=subset_rows,
        initial_models=runs,
        reference_origin=origin,
        classification_config=class_config,
        classification=classification,
        decisions=decisions,
        refinements=refinements,
        seconds=seconds,
        split=split,
    )
