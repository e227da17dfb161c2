"""VDAM on simulated particles with known views: class averages, assignments,
substitution, resumability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.class2d import (
    Class2dConfig,
    Schedule,
    assign_particles,
    class_resolution_a,
    initialise_state,
    load_checkpoint,
    run_minibatches,
    save_checkpoint,
)
from pipelines.simulate.particle_sets import SyntheticSet, simulate_views
from pipelines.simulate.view_metrics import (
    aligned_fsc,
    best_rotated_correlation,
    fsc_resolution_a,
)
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    phantom_volume,
    rescale_volume,
)

SMALL = Schedule(n_minibatches=16, initial_min=100, final_min=250)


def _accuracy(data: SyntheticSet, classes: np.ndarray, n_classes: int) -> float:
    """Fraction of particles in their class's majority view (classes may split a
    view, as they must when K exceeds the number of views)."""
    correct = 0
    for k in range(n_classes):
        members = data.view_index[classes == k]
        if members.size:
            correct += np.bincount(members).max()
    return correct / classes.size


def _check_recovery(
    data: SyntheticSet, config: Class2dConfig, seed: int, min_correlation: float
) -> None:
    rng = np.random.default_rng(seed)
    state = initialise_state(config, data.particles, rng)
    state = run_minibatches(config, state, data.particles)
    result = assign_particles(config, state, data.particles)
    k = config.n_classes
    counts = result.class_counts(k)
    accuracy = _accuracy(data, result.class_index, k)
    corr = np.array(
        [
            [best_rotated_correlation(ref, view) for view in data.views]
            for ref in state.references
        ]
    )
    print(f"\nclass counts {counts.tolist()}, substitutions {state.substitutions}")
    print(f"assignment accuracy {accuracy:.3f}")
    print(
        "best correlation of each true view with a class average:",
        np.round(corr.max(axis=0), 3).tolist(),
    )
    print("class resolution (Å):", np.round(class_resolution_a(config, state), 1))
    # FSC of each true view with its best class average (turned and shifted onto it)
    box = config.box_px
    fsc = [
        aligned_fsc(state.references[int(corr[:, v].argmax())], view)
        for v, view in enumerate(data.views)
    ]
    fsc_res = [fsc_resolution_a(f, box, config.pixel_size_a) for f in fsc]
    print(
        "FSC=0.5 resolution of each true view's best class (Å):", np.round(fsc_res, 1)
    )
    quarter = box // 8  # rings up to a quarter of Nyquist
    assert all(float(f[1 : quarter + 1].min()) >= 0.5 for f in fsc), "low-res FSC"
    assert np.all(counts > 0), "a class ended empty despite substitution"
    assert accuracy >= 0.9
    assert np.all(corr.max(axis=0) >= min_correlation)
    # psi and shift relative to the class's own frame are recovered: within a
    # class, psi_est - psi_true is one constant (circular mean resultant length)
    for k_ in range(k):
        members = result.class_index == k_
        views = data.view_index[members]
        if members.sum() < 20:
            continue
        main = members & (data.view_index == np.bincount(views).argmax())
        spread = np.abs(
            np.mean(np.exp(1j * np.deg2rad(result.psi_deg[main] - data.psi_deg[main])))
        )
        assert spread > 0.9, f"class {k_}: psi not consistent ({spread:.2f})"


@pytest.mark.parametrize("pose_search", ["coarse_fine", "exhaustive"])
def test_vdam_recovers_phantom_views(pose_search: str) -> None:
    rng = np.random.default_rng(7)
    volume = phantom_volume(32, 4.0, rng)
    data = simulate_views(
        volume, n_views=4, n_particles=500, pixel_size_a=4.0, snr=0.3, rng=rng
    )
    config = Class2dConfig(
        n_classes=6,
        box_px=32,
        pixel_size_a=4.0,
        psi_step_deg=10.0,
        offset_range_px=3.0,
        schedule=SMALL,
        pose_search=pose_search,
    )
    _check_recovery(data, config, seed=3, min_correlation=0.97)


def test_vdam_recovers_70s_ribosome_views(shared_data: Path) -> None:
    volume, _ = load_map(shared_data / "real" / "clean70SRibosome_vol_65p.mrc")
    volume = rescale_volume(volume, box_px=64)
    volume = rescale_volume(
        volume, from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A, to_pixel_size_a=10.0
    )
    box = volume.shape[0] - volume.shape[0] % 2
    volume = rescale_volume(volume, box_px=box)
    rng = np.random.default_rng(11)
    data = simulate_views(
        volume, n_views=3, n_particles=400, pixel_size_a=10.0, snr=0.3, rng=rng
    )
    config = Class2dConfig(
        n_classes=4,
        box_px=box,
        pixel_size_a=10.0,
        psi_step_deg=10.0,
        offset_range_px=3.0,
        schedule=SMALL,
    )
    # the ribosome's 20 Å detail at Nyquist is weaker in a Wiener-filtered average
    # of ~100 noisy particles than the phantom's smooth density: a lower floor
    _check_recovery(data, config, seed=5, min_correlation=0.83)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    volume = phantom_volume(24, 4.0, rng)
    data = simulate_views(
        volume, n_views=2, n_particles=300, pixel_size_a=4.0, snr=0.3, rng=rng
    )
    config = Class2dConfig(
        n_classes=3,
        box_px=24,
        pixel_size_a=4.0,
        psi_step_deg=20.0,
        offset_range_px=2.0,
        schedule=Schedule(n_minibatches=6, initial_min=60, final_min=120),
    )
    start = initialise_state(config, data.particles, np.random.default_rng(4))
    straight = run_minibatches(config, start, data.particles, 5)
    half = run_minibatches(config, start, data.particles, 3)
    save_checkpoint(tmp_path / "state.npz", config, half)
    config2, loaded = load_checkpoint(tmp_path / "state.npz")
    assert config2 == config
    resumed = run_minibatches(config2, loaded, data.particles, 2)
    assert resumed.minibatch_index == straight.minibatch_index == 5
    assert resumed.particles_processed == straight.particles_processed
    np.testing.assert_array_equal(resumed.seen, straight.seen)
    np.testing.assert_allclose(
        resumed.references, straight.references, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        resumed.first_moments, straight.first_moments, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(resumed.noise_sigma2, straight.noise_sigma2, rtol=1e-6)
    assert not np.allclose(half.references, straight.references)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no partials left


def test_cap_limits_particles_per_class() -> None:
    rng = np.random.default_rng(2)
    volume = phantom_volume(24, 4.0, rng)
    data = simulate_views(
        volume, n_views=2, n_particles=200, pixel_size_a=4.0, snr=0.3, rng=rng
    )
    config = Class2dConfig(
        n_classes=3,
        box_px=24,
        pixel_size_a=4.0,
        psi_step_deg=30.0,
        offset_range_px=1.0,
        max_particles_per_class=80,
        schedule=Schedule(n_minibatches=4, initial_min=60, final_min=100),
    )
    state = run_minibatches(
        config, initialise_state(config, data.particles, rng), data.particles
    )
    counts = assign_particles(config, state, data.particles).class_counts(3)
    print("capped counts", counts.tolist())
    assert counts.max() <= 80
    assert counts.sum() == 200
    assert state.class_fractions.max() <= 80 / 200 + 1e-9


@pytest.mark.parametrize("field", ["n_classes", "pixel_size_a"])
def test_bad_config_is_named(field: str) -> None:
    kwargs = {"n_classes": 2, "box_px": 32, "pixel_size_a": 1.0, field: 0}
    with pytest.raises(ValueError, match=field):
        Class2dConfig(**kwargs)
