"""Online-capable 2D classification with VDAM (RELION-4.0) and plain EM.

Typical use::

    config = Class2dConfig(n_classes=50, box_px=64, pixel_size_a=2.0)
    state = initialise_state(config, particles, rng)
    state = run_minibatches(config, state, particles)      # the whole schedule
    assignment = assign_particles(config, state, particles)

The state is resumable: :func:`save_checkpoint` / :func:`load_checkpoint`.
"""

from pipelines.class2d.assignment import Assignment, assign_particles
from pipelines.class2d.particles import ParticleStack, read_particle_stack
from pipelines.class2d.schedule import Schedule
from pipelines.class2d.state import (
    Class2dConfig,
    Class2dState,
    load_checkpoint,
    save_checkpoint,
)
from pipelines.class2d.vdam import (
    class_resolution_a,
    initialise_state,
    run_em_pass,
    run_minibatches,
    vdam_step,
)

__all__ = [
    "Assignment",
    "Class2dConfig",
    "Class2dState",
    "ParticleStack",
    "Schedule",
    "assign_particles",
    "class_resolution_a",
    "initialise_state",
    "load_checkpoint",
    "read_particle_stack",
    "run_em_pass",
    "run_minibatches",
    "save_checkpoint",
    "vdam_step",
]
