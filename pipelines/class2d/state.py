"""The classifier's configuration and its full, resumable state (saved atomically).

:class:`Class2dState` holds everything a run needs to continue exactly: references,
VDAM moments, noise spectrum, class fractions, counters, which particles were seen
and the random generator's state.  :func:`save_checkpoint` writes config and state
to one ``.npz`` through a temporary file, fsync and rename.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d.schedule import Schedule
from pipelines.errors import StageInputError
from pipelines.io.checkpoint import (
    load_state_npz,
    save_state_npz,
)
from pipelines.io.checkpoint import restore_rng as restore_rng_state

__all__ = [
    "Class2dConfig",
    "Class2dState",
    "PoseSearch",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]


class PoseSearch(StrEnum):
    """How the E-step searches psi x shift x class (see ``docs/class2d.md``)."""

    EXHAUSTIVE = "exhaustive"  # every pose at full sampling
    COARSE_FINE = "coarse_fine"  # coarse pass, then the fine neighbourhoods kept


@dataclass(frozen=True, slots=True, kw_only=True)
class Class2dConfig:
    """Parameters of a 2D classification (defaults as RELION-4.0's VDAM 2D).

    ``pose_search`` picks the exhaustive or the coarse-then-fine search
    (``adaptive_fraction`` of the coarse posterior mass is refined, RELION's
    ``--adaptive_fraction``); ``gpu`` runs the likelihood products on CuPy.
    """

    n_classes: int
    box_px: int
    pixel_size_a: float
    psi_step_deg: float = 6.0
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    offset_sigma_px: float = 3.0
    max_resolution_a: float | None = None
    adaptive_resolution: bool = True
    mask_diameter_a: float | None = None
    regularisation_t: float = 2.0
    beta1: float = 0.9
    beta2: float = 0.999
    inactivity_threshold: float = 0.1
    prune_threshold: float = 1e-4
    max_particles_per_class: int | None = None
    chunk_size: int = 64
    schedule: Schedule = field(default_factory=Schedule)
    pose_search: PoseSearch = PoseSearch.COARSE_FINE
    adaptive_fraction: float = 0.999
    gpu: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "pose_search", PoseSearch(self.pose_search))
        except ValueError as error:
            raise StageInputError(
                "<argument>",
                "pose_search",
                self.pose_search,
                f"must be one of {[m.value for m in PoseSearch]}",
            ) from error
        if not 0.0 < self.adaptive_fraction <= 1.0:
            raise StageInputError(
                "<argument>", "adaptive_fraction", self.adaptive_fraction, "in (0, 1]"
            )
        if self.n_classes < 1:
            raise StageInputError("<argument>", "n_classes", self.n_classes, ">= 1")
        if self.pixel_size_a <= 0:
            raise StageInputError(
                "<argument>", "pixel_size_a", self.pixel_size_a, "must be > 0"
            )

    @property
    def radius_px(self) -> int:
        nyquist = self.box_px // 2 - 1
        if self.max_resolution_a is None:
            return nyquist
        r = int(np.floor(self.box_px * self.pixel_size_a / self.max_resolution_a))
        return int(np.clip(r, 2, nyquist))

    @property
    def mask_radius_px(self) -> float:
        if self.mask_diameter_a is None:
            return 0.45 * self.box_px - 2.0
        return 0.5 * self.mask_diameter_a / self.pixel_size_a

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Class2dConfig:
        data = json.loads(text)
        data["schedule"] = Schedule(**data["schedule"])
        # files written before the coarse-then-fine search ran the exhaustive one:
        # resume them unchanged
        data.setdefault("pose_search", PoseSearch.EXHAUSTIVE.value)
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Class2dState:
    """Everything that evolves during a run (arrays are never modified in place).

    ``references`` ``(K, N, N)`` float32 real space; ``first_moments``
    ``(2, K, P)`` complex64 (one per half-set); ``second_moment`` ``(K, P)``
    float32; ``noise_sigma2`` ``(n_shells,)``; ``class_fractions`` ``(K,)``;
    ``seen`` ``(n_particles,)`` bool.
    """

    references: np.ndarray
    first_moments: np.ndarray
    second_moment: np.ndarray
    noise_sigma2: np.ndarray
    class_fractions: np.ndarray
    seen: np.ndarray
    minibatch_index: int = 0
    particles_processed: int = 0
    substitutions: int = 0
    rng_state: str = ""

    @property
    def particles_seen(self) -> int:
        return int(np.count_nonzero(self.seen))


def restore_rng(state: Class2dState) -> np.random.Generator:
    """A generator continuing exactly where the state's left off."""
    return restore_rng_state(state.rng_state)


_ARRAYS = (
    "references",
    "first_moments",
    "second_moment",
    "noise_sigma2",
    "class_fractions",
    "seen",
)
_SCALARS = ("minibatch_index", "particles_processed", "substitutions")


def save_checkpoint(
    path: str | Path, config: Class2dConfig, state: Class2dState
) -> Path:
    """Write config and state to ``path`` (``.npz``) atomically."""
    return save_state_npz(
        path, config.to_json(), state, arrays=_ARRAYS, scalars=_SCALARS
    )


def load_checkpoint(path: str | Path) -> tuple[Class2dConfig, Class2dState]:
    """Read what :func:`save_checkpoint` wrote."""

    def build(
        config_json: str, fields: dict[str, Any]
    ) -> tuple[Class2dConfig, Class2dState]:
        return Class2dConfig.from_json(config_json), Class2dState(**fields)

    return load_state_npz(
        path, arrays=_ARRAYS, scalars=_SCALARS, what="class2d", build=build
    )
