"""The per-frame patch pass ends early when the F-test on its current estimate is
clearly below the line (``pipelines.motion.local.REJECT_MARGIN``): the decision
must be the one the converged estimate gives, and a kept model must not change."""

from __future__ import annotations

import numpy as np
import pytest

import pipelines.motion.align as align_module
import pipelines.motion.local as local_module
from pipelines.motion.correct import correct_motion
from tests.pipelines.motion_movies import make_movie

MARGIN = local_module.REJECT_MARGIN  # the module's, before any test sets it
FIRST_MARGIN = local_module.FIRST_REJECT_MARGIN


def _run(
    frames: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    margin: float,
    first_margin: float | None = None,
):
    """``correct_motion`` with ``REJECT_MARGIN`` ``margin`` and
    ``FIRST_REJECT_MARGIN`` ``first_margin`` (default ``margin``; 0: never
    early) and the number of correlation passes of the local estimation.  The
    per-frame patch pass is not let converge (tolerance 0: 10 iterations), so
    that ending it early has iterations to save on these small movies (which
    converge in two)."""
    monkeypatch.setattr(local_module, "REJECT_MARGIN", margin)
    monkeypatch.setattr(
        local_module,
        "FIRST_REJECT_MARGIN",
        margin if first_margin is None else first_margin,
    )
    monkeypatch.setattr(local_module, "PATCH_TOLERANCE_PX", 0.0)
    passes = [0]
    fused = align_module._fused_window

    def counted(*args, **kwargs):
        passes[0] += 1
        return fused(*args, **kwargs)

    estimate = local_module.align_patches

    def local_passes(*args, **kwargs):
        monkeypatch.setattr(align_module, "_fused_window", counted)
        try:
            return estimate(*args, **kwargs)
        finally:
            monkeypatch.setattr(align_module, "_fused_window", fused)

    monkeypatch.setattr("pipelines.motion.correct.align_patches", local_passes)
    result = correct_motion(
        frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=300,
        patches=(5, 5),
        workers=1,
    )
    return result, passes[0]


@pytest.mark.parametrize(
    ("first_margin", "frame_passes"),
    [(FIRST_MARGIN, 1), (0.0, 2)],  # F after the first iteration 0.59 × critical
)
def test_rejected_early_as_the_converged_estimate_rejects(
    monkeypatch, rng, first_margin, frame_passes
):
    movie = make_movie(rng, n_frames=16, size=384)  # global drift only
    full, full_passes = _run(movie.frames, monkeypatch, 0.0)
    early, early_passes = _run(movie.frames, monkeypatch, MARGIN, first_margin)
    assert full.local is None
    assert early.local is None
    # the grouped pass's 3 and the per-frame pass's first 1 or 2 iterations
    assert early_passes == local_module.COARSE_ITERATIONS + frame_passes
    assert early_passes < full_passes
    np.testing.assert_array_equal(early.micrograph, full.micrograph)
    np.testing.assert_array_equal(early.shifts_px, full.shifts_px)


def test_a_kept_model_is_estimated_to_convergence(monkeypatch, rng):
    movie = make_movie(rng, n_frames=16, size=384, local_amplitude_px=3.0)
    full, full_passes = _run(movie.frames, monkeypatch, 0.0)
    early, early_passes = _run(movie.frames, monkeypatch, MARGIN, FIRST_MARGIN)
    assert full.local is not None
    assert early.local is not None
    assert early_passes == full_passes
    np.testing.assert_array_equal(early.local.coefficients, full.local.coefficients)
