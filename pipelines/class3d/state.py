"""The initial model's configuration and its full, resumable state.

:class:`InitialModelState` holds everything a run needs to continue exactly: the
per-class, per-half Fourier sums (the VDAM running estimate), the maps made from
them, class fractions, the noise spectrum, the current resolution limit, counters
and the random generator's state.  :func:`save_checkpoint` writes config and state
to one ``.npz`` through a temporary file, fsync and rename; the same seed and the
same particles give the same run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
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
    "InitialModelConfig",
    "InitialModelState",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

DEFAULT_SCHEDULE = Schedule(
    n_minibatches=60,
    initial_fraction=0.02,
    initial_min=100,
    initial_max=500,
    final_fraction=0.1,
    final_min=300,
    final_max=3000,
    initial_step=0.9,
    final_step=0.3,
    initial_phase=0.2,
    final_phase=0.2,
)
"""Mini-batches of an initial model: fewer and smaller than 2D's (RELION-4's
InitialModel uses 200 mini-batches from 100 particles; ours is sized for the online
pool), the same logistic growth of batch size and decay of the step."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialModelConfig:
    """Parameters of a de novo 3D initial model (``relion_refine --denovo_3dref
    --grad``).

    The resolution limit grows from ``initial_resolution_a`` to
    ``final_resolution_a`` (default: 2.5 pixels) along the schedule, held back to
    3 shells beyond where the half-set FSC falls below 0.143.  The pose search
    scores every orientation of a grid at ``oversampling`` times
    ``angular_step_deg`` and every shift on pixels within
    ``coarse_radius_fraction`` of the limit (at least the initial limit), then
    rescores the poses holding ``adaptive_fraction`` of that posterior (at most
    ``max_candidates``), each refined into the nearest rotations of the
    ``angular_step_deg`` grid, on every pixel within the limit.  With
    ``oversampling = 2`` (30° coarse) the search is 8 times cheaper but found
    52 % instead of 78 % of poses within 15° in our test (coarse pass on 11 shells): 1 is the default.  ``tau2_fudge`` is RELION's T (4 for initial
    models).  ``noise_fudge_initial`` multiplies the noise power the search uses
    (broader early posteriors), halving its excess every ``noise_fudge_halflife``
    mini-batches (RELION-3's SGD ``--sgd_sigma2fudge_initial``; 1: off).
    """

    n_classes: int
    box_px: int
    pixel_size_a: float
    particle_diameter_a: float | None = None
    symmetry: str = "C1"
    angular_step_deg: float = 15.0
    offset_range_px: float = 3.0
    offset_step_px: float = 1.5
    initial_resolution_a: float | None = None
    final_resolution_a: float | None = None
    coarse_radius_fraction: float = 0.6
    oversampling: int = 1
    adaptive_fraction: float = 0.999
    max_candidates: int = 128
    max_inserted_poses: int = 8
    tau2_fudge: float = 4.0
    padding: int = 2
    inactive_fraction: float = 0.2
    positive: bool = False
    noise_fudge_initial: float = 1.0
    noise_fudge_halflife: float = 5.0
    schedule: Schedule = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise StageInputError(
                "<argument>", "classes", self.n_classes, "must be >= 1"
            )
        if self.box_px < 16 or self.box_px % 2:
            raise StageInputError(
                "<argument>", "box_px", self.box_px, "must be even and >= 16"
            )
        if self.pixel_size_a <= 0:
            raise StageInputError(
                "<argument>", "pixel_size_a", self.pixel_size_a, "must be > 0"
            )

    @property
    def mask_radius_px(self) -> float:
        """Half the particle diameter (default 0.9 of the box), in pixels."""
        diameter_a = self.particle_diameter_a or 0.9 * self.box_px * self.pixel_size_a
        return min(diameter_a / (2.0 * self.pixel_size_a), self.box_px / 2.0 - 2.0)

    def shell_of(self, resolution_a: float) -> int:
        return int(
            np.clip(
                round(self.box_px * self.pixel_size_a / resolution_a),
                2,
                self.box_px // 2 - 1,
            )
        )

    @property
    def initial_radius_px(self) -> int:
        """The first resolution limit (default 40 Å or 4 shells, whichever is more)."""
        limit_a = self.initial_resolution_a or 40.0
        return max(4, self.shell_of(limit_a))

    @property
    def final_radius_px(self) -> int:
        limit_a = self.final_resolution_a or 2.5 * self.pixel_size_a
        return max(self.initial_radius_px, self.shell_of(limit_a))

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> InitialModelConfig:
        fields = json.loads(text)
        fields["schedule"] = Schedule(**fields["schedule"])
        return cls(**fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialModelState:
    """``data`` ``(K, 2, Np, Np, Np // 2 + 1)`` complex128 and ``weight`` (same,
    float64): the running sums per class and half set; ``maps`` ``(K, N, N, N)``
    float32 the references made from them; ``class_fractions`` ``(K,)``;
    ``noise_power`` ``(N // 2 + 1,)`` per shell of a pixel of the masked images'
    ``rfft2``; ``half_fsc`` ``(K, N // 2 + 1)``; ``radius_px`` the current limit."""

    data: np.ndarray
    weight: np.ndarray
    maps: np.ndarray
    class_fractions: np.ndarray
    noise_power: np.ndarray
    half_fsc: np.ndarray
    radius_px: int
    minibatch_index: int
    particles_processed: int
    substitutions: int
    rng_state: str

    @property
    def n_classes(self) -> int:
        return int(self.maps.shape[0])


def restore_rng(state: InitialModelState) -> np.random.Generator:
    """A generator continuing exactly where the state's left off."""
    return restore_rng_state(state.rng_state)


_ARRAYS = ("data", "weight", "maps", "class_fractions", "noise_power", "half_fsc")
_SCALARS = ("radius_px", "minibatch_index", "particles_processed", "substitutions")


def save_checkpoint(
    path: str | Path, config: InitialModelConfig, state: InitialModelState
) -> Path:
    """Write config and state to ``path`` (``.npz``) atomically."""
    return save_state_npz(
        path, config.to_json(), state, arrays=_ARRAYS, scalars=_SCALARS
    )


def load_checkpoint(path: str | Path) -> tuple[InitialModelConfig, InitialModelState]:
    """Read what :func:`save_checkpoint` wrote."""

    def build(
        config_json: str, fields: dict[str, Any]
    ) -> tuple[InitialModelConfig, InitialModelState]:
        return InitialModelConfig.from_json(config_json), InitialModelState(**fields)

    return load_state_npz(
        path, arrays=_ARRAYS, scalars=_SCALARS, what="initial-model", build=build
    )
