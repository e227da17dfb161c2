"""The online 2D classifier: pool growth, minimum pool, favouring new particles,
pausing without new data, snapshots and kill/resume equal to an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import starfile

from livestream.class2d.actor import ActorSettings, Class2dActor
from livestream.class2d.pool.files import POOL_FOLDER
from livestream.telemetry.events import (
    EventKind,
    decode_event,
    encode_event,
    stamp_event,
)
from pipelines.class2d import Schedule
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume

N_PARTICLES = 240
SETTINGS = ActorSettings(
    n_classes=3,
    min_pool=100,
    new_fraction=0.5,
    max_passes=2.0,
    psi_step_deg=20.0,
    offset_range_px=2.0,
    schedule=Schedule(n_minibatches=8, initial_min=60, final_min=100),
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one particle stack and two STAR files as Extract grows them:
    ``first.star`` (rows 1-120) and ``all.star`` (rows 1-240)."""
    folder = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(8)
    volume = phantom_volume(24, 4.0, rng)
    data = simulate_views(
        volume, n_views=2, n_particles=N_PARTICLES, pixel_size_a=4.0, snr=0.5, rng=rng
    )
    optics, table = write_particle_set(
        folder, "Extract/job005/particles.mrcs", data, 4.0
    )
    star_dir = folder / "Extract" / "job005"
    starfile.write(
        {"optics": optics, "particles": table[:120]}, star_dir / "first.star"
    )
    starfile.write({"optics": optics, "particles": table}, star_dir / "all.star")
    return folder


def _actor(project: Path, name: str) -> Class2dActor:
    return Class2dActor(project / name, SETTINGS, seed=5, project=project)


def test_pool_grows_and_waits_for_minimum(project: Path) -> None:
    actor = _actor(project, "Class2D/pool")
    assert not actor.step()  # nothing fed
    assert actor.feed(project / "Extract/job005/first.star") == 120
    assert actor.feed(project / "Extract/job005/first.star") == 0  # known rows
    assert actor.pool_size == 120
    small = Class2dActor(
        project / "Class2D/small",
        ActorSettings(n_classes=2, min_pool=200),
        seed=0,
        project=project,
    )
    small.feed(project / "Extract/job005/first.star")
    assert not small.step()  # below min_pool: no update, no state
    assert small.state is None
    assert actor.step()
    assert actor.state is not None
    first_seen = actor.state.particles_seen
    assert 0 < first_seen <= 120
    assert actor.feed(project / "Extract/job005/all.star") == 120  # only new rows
    assert actor.pool_size == N_PARTICLES
    assert actor.state.seen.size == N_PARTICLES
    before = actor.state.seen.copy()
    assert actor.step()
    batch = actor.state.particles_processed - first_seen
    newly = int(np.count_nonzero(actor.state.seen & ~before))
    new_rows = int(np.count_nonzero(actor.state.seen[120:]))
    print(f"\nbatch {batch}: {newly} never seen before, {new_rows} from the new rows")
    # half of the batch comes from unseen particles (new_fraction = 0.5) ...
    assert newly >= 0.5 * batch - 2
    # ... and the rest re-visits seen ones
    assert newly < batch


def test_steps_pause_without_new_particles(project: Path) -> None:
    actor = _actor(project, "Class2D/pause")
    actor.feed(project / "Extract/job005/first.star")
    steps = 0
    while actor.step():
        steps += 1
        assert steps < 50, "the actor never pauses"
    assert actor.state is not None
    assert actor.state.particles_processed >= SETTINGS.max_passes * 120
    assert not actor.ready()
    actor.feed(project / "Extract/job005/all.star")
    assert actor.ready()  # new particles: learning resumes


def test_kill_and_resume_equals_uninterrupted(project: Path) -> None:
    straight = _actor(project, "Class2D/straight")
    straight.feed(project / "Extract/job005/first.star")
    for _ in range(2):
        assert straight.step()
    straight.feed(project / "Extract/job005/all.star")
    for _ in range(3):
        assert straight.step()

    killed = _actor(project, "Class2D/killed")
    killed.feed(project / "Extract/job005/first.star")
    for _ in range(2):
        assert killed.step()
    path = killed.checkpoint()
    half_refs = killed.state.references.copy()  # type: ignore[union-attr]
    del killed  # the process dies after the checkpoint
    resumed = Class2dActor.resume(project / "Class2D/killed")
    assert resumed is not None
    assert resumed.pool_size == 120
    assert resumed.feed(project / "Extract/job005/first.star") == 0
    assert resumed.feed(project / "Extract/job005/all.star") == 120
    for _ in range(3):
        assert resumed.step()
    a, b = straight.state, resumed.state
    assert a is not None
    assert b is not None
    assert b.minibatch_index == a.minibatch_index == 5
    np.testing.assert_array_equal(b.seen, a.seen)
    np.testing.assert_allclose(b.references, a.references, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.class_fractions, a.class_fractions, rtol=1e-6)
    assert not np.allclose(half_refs, a.references)
    # no partials: the checkpoint and the pool's append-only files only
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, POOL_FOLDER]
    assert Class2dActor.resume(project / "Class2D/none") is None


def test_snapshot_writes_files_and_event(project: Path) -> None:
    actor = _actor(project, "Class2D/job007")
    actor.feed(project / "Extract/job005/all.star")
    for _ in range(4):
        actor.step()
    info = actor.snapshot()
    for path in (
        info.classes_mrcs,
        info.model_star,
        info.data_star,
        info.selected_star,
        info.montage_png,
    ):
        assert path.exists(), path
    data = starfile.read(info.data_star, always_dict=True)["particles"]
    assert len(data) == N_PARTICLES
    selected = starfile.read(info.selected_star, always_dict=True)
    n_selected = 0 if "particles" not in selected else len(selected["particles"])
    payload = info.payload
    assert payload["selected_particles"] == n_selected
    assert sum(payload["class_counts"]) == N_PARTICLES
    assert payload["iteration"] == 4
    assert payload["particles_seen"] <= N_PARTICLES
    event = decode_event(
        encode_event(stamp_event(EventKind.CLASS2D, "session-1", payload))
    )
    assert event["schema"] == "livestream.class2d/1"
    assert event["montage_png"] == str(info.montage_png)
    print("\nclass2d event", json.dumps(payload)[:300])
    assert actor.minibatches_since_snapshot == 0


def test_class2d_command_ranks_and_draws_montage(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    from livestream.cli.main import main as cli_main

    monkeypatch.chdir(project)  # image names are relative to the project
    out = project / "Class2D" / "offline"
    code = cli_main(
        [
            "class2d",
            "Extract/job005/all.star",
            "--classes",
            "3",
            "--out",
            str(out),
            "--mini-batches",
            "4",
            "--psi-step-deg",
            "20",
            "--offset-range-px",
            "2",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    selected = starfile.read(summary["selected_star"], always_dict=True)
    n_selected = 0 if "particles" not in selected else len(selected["particles"])
    assert summary["selected_particles"] == n_selected
    assert len(summary["class_scores"]) == 3
    assert all(0.0 <= s <= 1.0 for s in summary["class_scores"])
    with Image.open(summary["montage_png"]) as image:
        assert image.format == "PNG"


_CHILD = """
import sys
from pathlib import Path
from livestream.class2d.actor import Class2dActor
from tests.livestream.class2d.test_class2d_actor import SETTINGS
project = Path(sys.argv[1])
actor = Class2dActor(project / "Class2D/sigkill", SETTINGS, seed=5, project=project)
actor.feed(project / "Extract/job005/all.star")
while True:  # checkpoint after every mini-batch until killed
    actor.step()
    actor.checkpoint()
    print(actor.state.minibatch_index, flush=True)
"""


def test_sigkill_during_checkpoints_resumes_exactly(project: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(project)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:  # wait until two mini-batches are checkpointed
            if int(line) >= 2:
                break
        child.send_signal(signal.SIGKILL)  # the child is busy with the next one
        child.wait()
    resumed = Class2dActor.resume(project / "Class2D/sigkill")
    assert resumed is not None
    assert resumed.state is not None
    done = resumed.state.minibatch_index
    assert done >= 2
    straight = _actor(project, "Class2D/sigkill-straight")
    straight.feed(project / "Extract/job005/all.star")
    for _ in range(done + 1):
        straight.step()
    resumed.step()
    assert straight.state is not None
    np.testing.assert_allclose(
        resumed.state.references, straight.state.references, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(resumed.state.seen, straight.state.seen)
    leftovers = [p.name for p in (project / "Class2D/sigkill").iterdir()]
    print("\nkilled after", done, "mini-batches; files left:", leftovers)


def test_actor_classifies_an_odd_box(tmp_path: Path) -> None:
    """Particles of a 25-px box: classified at 26 px inside, snapshot written at
    the input box and pixel size (the pool's optics say 25 px, 4 Å)."""
    import mrcfile

    rng = np.random.default_rng(4)
    data = simulate_views(
        phantom_volume(26, 4.0, rng),
        n_views=2,
        n_particles=120,
        pixel_size_a=4.0,
        snr=0.5,
        rng=rng,
    )
    odd = np.ascontiguousarray(data.particles.images[:, 1:, 1:])
    particles = dataclasses.replace(data.particles, images=odd)
    optics, table = write_particle_set(
        tmp_path,
        "Extract/job005/particles.mrcs",
        dataclasses.replace(data, particles=particles),
        4.0,
    )
    star = tmp_path / "Extract/job005/particles.star"
    starfile.write({"optics": optics, "particles": table}, star)
    actor = Class2dActor(
        tmp_path / "Class2D/job007", SETTINGS, seed=5, project=tmp_path
    )
    actor.feed(star)
    assert actor.config is not None
    assert actor.config.box_px == 26
    assert actor.config.pixel_size_a == pytest.approx(4.0 * 25 / 26)
    assert actor.step()
    assert actor.step()
    info = actor.snapshot()
    with mrcfile.open(info.classes_mrcs) as mrc:
        assert mrc.data.shape == (3, 25, 25)
        assert float(mrc.voxel_size.x) == pytest.approx(4.0, rel=1e-5)
    model = starfile.read(info.model_star, always_dict=True)["model_general"]
    assert model["rlnOriginalImageSize"] == 25
    assert sum(info.payload["class_counts"]) == 120
