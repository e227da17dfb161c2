"""The online 3D initial model: waits for ``start_particles``, refines as the
selection grows, snapshots every file, and kill/resume equals an uninterrupted
run with the same seed."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.class3d.actor import CHECKPOINT_NAME, Class3dActor, Class3dSettings
from pipelines.errors import StageInputError
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume

N_PARTICLES = 240
PX = 6.0
SETTINGS = Class3dSettings(
    start_particles=100,
    mini_batch=60,
    n_minibatches=6,
    snapshot_every=2,
    snapshot_sample=120,
    box_px=32,
    angular_step_deg=30.0,
    max_passes=2.0,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one particle stack (box 32) and the 2D selection as it
    grows: ``first.star`` (rows 1-120) and ``all.star`` (rows 1-240)."""
    folder = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(8)
    volume = phantom_volume(32, PX, rng)
    data = simulate_views(
        volume, n_views=40, n_particles=N_PARTICLES, pixel_size_a=PX, snr=1.0, rng=rng
    )
    optics, table = write_particle_set(
        folder, "Extract/job006/particles.mrcs", data, PX
    )
    star_dir = folder / "Class2D" / "job007"
    star_dir.mkdir(parents=True)
    starfile.write(
        {"optics": optics, "particles": table[:120]}, star_dir / "first.star"
    )
    starfile.write({"optics": optics, "particles": table}, star_dir / "all.star")
    return folder


def _actor(project: Path, name: str) -> Class3dActor:
    return Class3dActor(project / name, SETTINGS, seed=3, project=project)


def _selected(project: Path, name: str) -> Path:
    return project / "Class2D" / "job007" / name


def test_waits_for_start_particles_then_refines_as_particles_arrive(
    project: Path,
) -> None:
    actor = _actor(project, "InitialModel/wait")
    assert not actor.step()  # nothing fed
    late = Class3dActor(
        project / "InitialModel/late",
        Class3dSettings(start_particles=200, box_px=32),
        seed=0,
        project=project,
    )
    late.feed(_selected(project, "first.star"))
    assert not late.step()
    assert late.state is None
    assert actor.feed(_selected(project, "first.star")) == 120
    assert actor.step()
    assert actor.state is not None
    assert actor.state.minibatch_index == 1
    steps = 1
    while actor.step():
        steps += 1
        assert steps < 40, "the actor never pauses"
    assert actor.state.particles_processed >= SETTINGS.max_passes * 120
    assert not actor.ready()
    before = actor.state.minibatch_index
    assert actor.feed(_selected(project, "all.star")) == 120  # only new rows
    assert actor.ready()  # new particles: it goes on from where it was
    assert actor.step()
    assert actor.state.minibatch_index == before + 1
    assert actor.particles_seen > 120
    # the selection shrinks: rows no longer selected are retired, not drawn
    assert actor.feed(_selected(project, "first.star")) == 0
    assert actor.pool_size == 120
    assert actor.particles_seen <= 120
    assert actor.state.minibatch_index == before + 1  # kept, never restarted


def test_snapshot_writes_maps_halves_and_plots(project: Path) -> None:
    actor = _actor(project, "InitialModel/snap")
    actor.feed(_selected(project, "all.star"))
    for _ in range(3):
        assert actor.step()
    info = actor.snapshot()
    p = info.payload
    assert p["schema"] == "livestream.class3d/1"
    assert p["iteration"] == 3
    assert p["particles_assigned"] == 120
    assert p["pool_particles"] == N_PARTICLES
    assert 0.0 < p["orientation_coverage"] <= 1.0
    assert np.isclose(sum(p["class_fractions"]), 1.0, atol=1e-3)
    assert p["resolution_a"] >= 2 * PX
    folder = project / "InitialModel/snap"
    with mrcfile.open(info.initial_model) as mrc:
        assert mrc.data.shape == (32, 32, 32)
        assert np.isclose(float(mrc.voxel_size.x), PX)
    for half in (1, 2):
        assert (folder / f"run_it003_half{half}_class001_unfil.mrc").is_file()
    for png in (*info.slices_png, info.fsc_png, info.directions_png):
        assert png.read_bytes()[:4] == b"\x89PNG"
    data = starfile.read(info.data_star, always_dict=True)["particles"]
    assert len(data) == 120
    assert set(data["rlnClassNumber"]) == {1}
    model = starfile.read(info.model_star, always_dict=True)
    assert model["model_general"]["rlnSymmetryGroup"] == "C1"


def test_kill_and_resume_equals_uninterrupted(project: Path) -> None:
    straight = _actor(project, "InitialModel/straight")
    straight.feed(_selected(project, "first.star"))
    for _ in range(2):
        assert straight.step()
    straight.feed(_selected(project, "all.star"))
    for _ in range(2):
        assert straight.step()

    killed = _actor(project, "InitialModel/killed")
    killed.feed(_selected(project, "first.star"))
    for _ in range(2):
        assert killed.step()
    killed.checkpoint()
    assert killed.step()  # this mini-batch is lost with the kill
    del killed

    resumed = Class3dActor.resume(project / "InitialModel/killed", project=project)
    assert resumed is not None
    assert resumed.state is not None
    assert resumed.state.minibatch_index == 2
    assert resumed.feed(_selected(project, "first.star")) == 0  # not fed twice
    resumed.feed(_selected(project, "all.star"))
    for _ in range(2):
        assert resumed.step()
    assert straight.state is not None
    assert resumed.state is not None
    np.testing.assert_array_equal(resumed.state.maps, straight.state.maps)
    np.testing.assert_array_equal(resumed.seen, straight.seen)
    assert resumed.state.rng_state == straight.state.rng_state


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not an npz")
    with pytest.raises(StageInputError, match=CHECKPOINT_NAME):
        Class3dActor.resume(tmp_path)
    assert Class3dActor.resume(tmp_path / "none") is None
