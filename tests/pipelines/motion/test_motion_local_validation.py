"""The local-motion model is kept only when it predicts patches it was not fitted
to: time-correlated patch noise can pass an F-test, not this."""

from __future__ import annotations

import numpy as np

from pipelines.motion.local import (
    _predicts_held_out_patches,
    evaluate_local_model,
    spatial_basis,
)

PY = PX = 5
N_FRAMES = 30


def _grid_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = (np.arange(PX) + 0.5) / PX - 0.5
    u, v = (a.ravel() for a in np.meshgrid(centres, centres))
    return u, v, spatial_basis(u, v)


def _random_walks(rng: np.random.Generator, step_px: float) -> np.ndarray:
    """Per-patch random walks ``(n_patches, n_frames, 2)``: noise independent
    between patches, strongly correlated in time within one."""
    steps = rng.normal(scale=step_px, size=(PY * PX, N_FRAMES, 2))
    return np.cumsum(steps, axis=1)


def test_smooth_field_with_noise_is_kept(rng):
    u, v, basis = _grid_basis()
    coefficients = rng.normal(scale=1.0, size=36) / np.tile([30.0, 900.0, 27000.0], 12)
    field = evaluate_local_model(coefficients, np.arange(N_FRAMES), u, v)
    data = field.transpose(1, 0, 2) + _random_walks(rng, 0.02)
    assert np.abs(field).max() > 0.5  # a field worth modelling
    used = np.ones(PY * PX, dtype=bool)
    assert _predicts_held_out_patches(data, basis, used, PY, PX)


def test_time_correlated_patch_noise_is_rejected():
    _, _, basis = _grid_basis()
    used = np.ones(PY * PX, dtype=bool)
    kept = [
        _predicts_held_out_patches(
            _random_walks(np.random.default_rng(seed), 0.5), basis, used, PY, PX
        )
        for seed in range(10)
    ]
    # noise with no spatial structure: a model fitted to other patches predicts
    # worse than zero local motion
    assert sum(kept) <= 1, kept
