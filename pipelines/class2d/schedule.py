"""Mini-batch sizes and step sizes of a VDAM run (RELION-4.0's 2D defaults).

A run of ``n_minibatches`` has three phases: initial (the first ``initial_phase``
fraction), middle and final (the last ``final_phase`` fraction).  Batch size and
step size keep their initial values in the initial phase, their final values in the
final phase, and move between them along a logistic (slope 10 on the middle-phase
fraction) in between.  Class substitution runs only in the middle phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import StageInputError

__all__ = ["Schedule", "in_middle_phase", "minibatch_size", "step_size"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    n_minibatches: int = 200
    initial_fraction: float = 0.005
    initial_min: int = 200
    initial_max: int = 10_000
    final_fraction: float = 0.05
    final_min: int = 1_000
    final_max: int = 100_000
    initial_step: float = 0.9
    final_step: float = 0.3
    initial_phase: float = 0.3
    final_phase: float = 0.2

    def __post_init__(self) -> None:
        if self.n_minibatches < 1:
            raise StageInputError(
                "<argument>", "n_minibatches", self.n_minibatches, "must be >= 1"
            )
        if self.initial_phase + self.final_phase > 1.0:
            raise StageInputError(
                "<argument>",
                "initial_phase + final_phase",
                self.initial_phase + self.final_phase,
                "must be <= 1",
            )


def _progress(index: int, schedule: Schedule) -> float:
    """0 in the initial phase, 1 in the final phase, logistic in between."""
    fraction = index / max(schedule.n_minibatches - 1, 1)
    width = 1.0 - schedule.initial_phase - schedule.final_phase
    if fraction <= schedule.initial_phase or width <= 0:
        return 0.0 if fraction <= schedule.initial_phase else 1.0
    if fraction >= 1.0 - schedule.final_phase:
        return 1.0
    x = (fraction - schedule.initial_phase) / width
    low = 1.0 / (1.0 + np.exp(5.0))
    high = 1.0 / (1.0 + np.exp(-5.0))
    return float((1.0 / (1.0 + np.exp(-10.0 * (x - 0.5))) - low) / (high - low))


def minibatch_size(index: int, n_particles: int, schedule: Schedule) -> int:
    """Particles in mini-batch ``index`` of a data set of ``n_particles``."""
    first = np.clip(
        round(schedule.initial_fraction * n_particles),
        schedule.initial_min,
        schedule.initial_max,
    )
    last = np.clip(
        round(schedule.final_fraction * n_particles),
        schedule.final_min,
        schedule.final_max,
    )
    size = first + _progress(index, schedule) * (last - first)
    return int(min(max(round(size), 2), n_particles))


def step_size(index: int, schedule: Schedule) -> float:
    """The VDAM step (0.9 -> 0.3 by default) of mini-batch ``index``."""
    p = _progress(index, schedule)
    return float(
        schedule.initial_step + p * (schedule.final_step - schedule.initial_step)
    )


def in_middle_phase(index: int, schedule: Schedule) -> bool:
    fraction = index / max(schedule.n_minibatches - 1, 1)
    return schedule.initial_phase <= fraction <= 1.0 - schedule.final_phase
