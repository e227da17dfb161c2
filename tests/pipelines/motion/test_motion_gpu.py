"""The CuPy path agrees with the CPU path (the stand-in in CI, CuPy where a GPU is)."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from pipelines.motion.correct import correct_motion
from tests.pipelines.motion_movies import make_movie


def test_cupy_path_matches_numpy(rng: np.random.Generator, cupy: ModuleType) -> None:
    movie = make_movie(rng, n_frames=12, size=256, local_amplitude_px=2.0)
    kwargs = {"pixel_size_a": 1.0, "dose_per_frame_e_per_a2": 1.5, "voltage_kv": 300}
    cpu = correct_motion(movie.frames, patches=(3, 3), **kwargs)
    gpu = correct_motion(movie.frames, patches=(3, 3), xp=cupy, **kwargs)
    assert np.allclose(gpu.shifts_px, cpu.shifts_px, atol=0.02)
    scale = np.std(cpu.micrograph)
    assert np.max(np.abs(gpu.micrograph - cpu.micrograph)) < 0.01 * scale
