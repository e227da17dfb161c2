"""The particle pool follows particles.star exactly once: rows that leave it (a
re-picked exposure's old stack) are retired, never drawn, assigned or written
again, and stay retired after a checkpoint and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from livestream.class2d.actor import ActorSettings, Class2dActor
from pipelines.class2d import Schedule
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume

SETTINGS = ActorSettings(
    n_classes=2,
    min_pool=20,
    snapshot_every=1,
    psi_step_deg=30.0,
    offset_range_px=1.0,
    schedule=Schedule(n_minibatches=4, initial_min=20, final_min=20),
)


def _exposure(project: Path, stack: str, seed: int) -> tuple[pd.DataFrame, ...]:
    volume = phantom_volume(24, 4.0, np.random.default_rng(8))
    data = simulate_views(
        volume,
        n_views=2,
        n_particles=16,
        pixel_size_a=4.0,
        snr=0.5,
        rng=np.random.default_rng(seed),
    )
    return write_particle_set(project, stack, data, 4.0)


def _star(project: Path, parts: list[tuple[pd.DataFrame, pd.DataFrame]]) -> Path:
    path = project / "particles.star"
    optics = parts[0][0]
    table = pd.concat([p for _, p in parts], ignore_index=True)
    starfile.write({"optics": optics, "particles": table}, path)
    return path


def test_repicked_rows_are_retired_and_stay_retired_after_resume(
    tmp_path: Path,
) -> None:
    a, b = _exposure(tmp_path, "a.mrcs", 1), _exposure(tmp_path, "b.mrcs", 2)
    b_again = _exposure(tmp_path, "b_tpl1.mrcs", 3)  # exposure b, re-picked
    folder = tmp_path / "Class2D"
    actor = Class2dActor(folder, SETTINGS, seed=0, project=tmp_path)
    assert actor.feed(_star(tmp_path, [a, b])) == 32
    assert actor.step()

    added = actor.feed(_star(tmp_path, [a, b_again]))
    assert added == 16
    assert actor.pool.n_retired_last == 16
    assert actor.pool.size == 48  # indices never move
    assert actor.pool_size == 32
    retired = ~actor.pool.active
    assert set(actor.pool.stacks[retired]) == {str((tmp_path / "b.mrcs").resolve())}
    rng = np.random.default_rng(0)
    for _ in range(20):  # retired rows are never drawn
        assert actor.pool.active[actor._draw_batch(rng)].all()
    assert actor.step()
    info = actor.snapshot()
    data = starfile.read(info.data_star, always_dict=True)["particles"]
    assert len(data) == 32
    assert not data["rlnImageName"].str.endswith("@b.mrcs").any()

    actor.checkpoint()
    (tmp_path / "b.mrcs").unlink()  # a retired row's stack need not be readable
    resumed = Class2dActor.resume(folder, project=tmp_path)
    assert resumed is not None
    assert resumed.pool_size == 32
    np.testing.assert_array_equal(resumed.pool.active, actor.pool.active)
    np.testing.assert_array_equal(
        resumed.pool.read_images(resumed.pool.active_rows()),
        actor.pool.read_images(actor.pool.active_rows()),
    )
    assert resumed.feed(_star(tmp_path, [a, b_again])) == 0
    assert resumed.pool.n_retired_last == 0
    assert resumed.step()

    # b's old rows come back (curation accepts it again): added as new rows
    _exposure(tmp_path, "b.mrcs", 2)
    assert resumed.feed(_star(tmp_path, [a, b, b_again])) == 16
    assert resumed.pool_size == 48
    assert resumed.pool.size == 64
