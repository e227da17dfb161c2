"""3D initial model from particles alone (RELION-4's VDAM ``--denovo_3dref --grad``).

Typical use::

    config = InitialModelConfig(n_classes=1, box_px=64, pixel_size_a=5.0)
    state = initialise_state(config, particles, np.random.default_rng(0))
    state = run_minibatches(config, state, particles)   # or vdam_step, one by one
    assignment = assign_particles(config, state, particles)

The state is resumable (:func:`save_checkpoint` / :func:`load_checkpoint`) and
deterministic for a seed.  :func:`align_maps` superposes a map on another
(rotation search, both hands); :func:`align_symmetry` finds a map's symmetry axes.
:func:`classify_particles` is 3D classification (K references, EM over all
particles; :mod:`.classify`); :func:`classify_without_alignment` classifies
particles at fixed poses (RELION's ``--skip_align``; :mod:`.skip_align`).
"""

from pipelines.class3d.classify import (
    Classification,
    ClassificationOptions,
    classify_particles,
)
from pipelines.class3d.orientations import PoseGrid, pose_grid, shift_grid
from pipelines.class3d.skip_align import (
    SkipAlignClassification,
    SkipAlignOptions,
    classify_without_alignment,
)
from pipelines.class3d.starts import StartChoice, best_of_starts
from pipelines.class3d.state import (
    InitialModelConfig,
    InitialModelState,
    load_checkpoint,
    save_checkpoint,
)
from pipelines.class3d.vdam import (
    Assignment,
    assign_particles,
    initialise_state,
    run_minibatches,
    vdam_step,
)

__all__ = [
    "Assignment",
    "Classification",
    "ClassificationOptions",
    "InitialModelConfig",
    "InitialModelState",
    "PoseGrid",
    "SkipAlignClassification",
    "SkipAlignOptions",
    "StartChoice",
    "assign_particles",
    "best_of_starts",
    "classify_particles",
    "classify_without_alignment",
    "initialise_state",
    "load_checkpoint",
    "pose_grid",
    "run_minibatches",
    "save_checkpoint",
    "shift_grid",
    "vdam_step",
]
