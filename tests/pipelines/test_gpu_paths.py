"""Every GPU branch of the ``xp`` seam gives the CPU's answer on the same input.

The ``cupy`` fixture is the strict CPU stand-in in CI (tests/cupy_standin.py: no
implicit conversion to NumPy, no mixing of host and device arrays) and the real
CuPy where a GPU is (``-m gpu``; ``benchmarks/gpu_check.sh``).  Motion and the 2D
likelihood have their own such tests beside their CPU tests.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import numpy as np

from pipelines.class2d import (
    Class2dConfig,
    Schedule,
    assign_particles,
    initialise_state,
    run_minibatches,
)
from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.thon import make_thon_micrograph
from pipelines.simulate.volumes import phantom_volume


def test_ctf_estimate_on_the_device_matches_the_cpu(
    rng: np.random.Generator, cupy: ModuleType
) -> None:
    truth = CtfParams(
        defocus_u_a=15200.0,
        defocus_v_a=14800.0,
        astigmatism_angle_deg=30.0,
        bfactor_a2=40.0,
    )
    image = make_thon_micrograph(truth, contrast=0.1, rng=rng)
    kwargs = {"pixel_size_a": 1.0, "voltage_kv": 300.0, "cs_mm": 2.7}
    cpu = estimate_ctf(image, **kwargs)
    gpu = estimate_ctf(image, xp=cupy, **kwargs)
    assert cpu.trusted
    assert gpu.trusted
    assert abs(gpu.defocus_u_a - cpu.defocus_u_a) < 5.0
    assert abs(gpu.defocus_v_a - cpu.defocus_v_a) < 5.0
    assert (
        abs(gpu.fit_resolution_a - cpu.fit_resolution_a) < 0.05 * cpu.fit_resolution_a
    )


def test_class2d_minibatches_on_the_device_match_the_cpu(cupy: ModuleType) -> None:
    rng = np.random.default_rng(5)
    volume = phantom_volume(32, 4.0, rng)
    data = simulate_views(
        volume, n_views=3, n_particles=300, pixel_size_a=4.0, snr=0.3, rng=rng
    )
    config = Class2dConfig(
        n_classes=4,
        box_px=32,
        pixel_size_a=4.0,
        psi_step_deg=15.0,
        offset_range_px=2.0,
        schedule=Schedule(n_minibatches=6, initial_min=100, final_min=200),
    )
    results = []
    for gpu in (False, True):
        run_config = replace(config, gpu=gpu)
        state = initialise_state(run_config, data.particles, np.random.default_rng(1))
        state = run_minibatches(run_config, state, data.particles)
        results.append((state, assign_particles(run_config, state, data.particles)))
    (cpu_state, cpu), (gpu_state, gpu) = results
    agree = float(np.mean(cpu.class_index == gpu.class_index))
    assert agree > 0.98, agree
    np.testing.assert_allclose(gpu_state.references, cpu_state.references, atol=1e-3)
