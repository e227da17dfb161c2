"""The pool reads only the new tail of a growing particles.star, falls back to a
full read when the file was rewritten otherwise, and reads images on demand from
the stacks (no image held in memory); a snapshot assigns a bounded sample."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from livestream.class2d.actor import ActorSettings, Class2dActor
from livestream.class2d.pool import ParticlePool
from pipelines.class2d import Schedule
from pipelines.extraction.particles_star import append_particles_star

BOX = 16


def _optics() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [4.0],
            "rlnImageSize": [BOX],
        }
    )


def _exposure(project: Path, name: str, n: int, seed: int) -> pd.DataFrame:
    """A float16 stack of ``n`` distinct images and its STAR rows."""
    images = np.random.default_rng(seed).standard_normal((n, BOX, BOX))
    with mrcfile.new(project / name, overwrite=True) as mrc:
        mrc.set_data(images.astype(np.float16))
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@{name}" for i in range(1, n + 1)],
            "rlnMicrographName": [name.replace(".mrcs", ".mrc")] * n,
            "rlnDefocusU": np.full(n, 10000.0 + seed),
            "rlnDefocusV": np.full(n, 10100.0 + seed),
            "rlnDefocusAngle": np.full(n, 5.0),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )


def _expected(project: Path, names: list[str]) -> np.ndarray:
    return np.concatenate([mrcfile.read(project / n).astype(np.float32) for n in names])


def test_growing_star_is_read_by_its_tail(tmp_path: Path) -> None:
    star = tmp_path / "particles.star"
    pool = ParticlePool(tmp_path)
    names = [f"e{k}.mrcs" for k in range(4)]
    for k, name in enumerate(names):  # the Extract job's atomic append
        append_particles_star(star, _optics(), _exposure(tmp_path, name, 5, k))
        assert pool.feed(star) == 5
        assert pool.last_feed_read == ("full" if k == 0 else "tail")
    assert pool.feed(star) == 0
    assert pool.last_feed_read == "tail"
    with open(star, "a") as fh:  # grown in place, the last row not finished yet
        fh.write("000001@e0.mrcs e0.mrc 1 2 3 1\n000002@e0.mrcs e0.m")
    assert pool.feed(star) == 0  # e0's image 1 is known, the half row waits
    assert pool.last_feed_read == "tail"
    np.testing.assert_array_equal(
        pool.read_images(np.arange(20)), _expected(tmp_path, names)
    )
    table = pool.table
    assert list(table["rlnImageName"]) == [
        f"{i:06d}@{n}" for n in names for i in range(1, 6)
    ]
    np.testing.assert_array_equal(
        pool.stack(np.array([0, 5, 19])).defocus_u_a, [10000.0, 10001.0, 10003.0]
    )


def test_rewritten_star_is_read_in_full_and_its_missing_rows_retired(
    tmp_path: Path,
) -> None:
    star = tmp_path / "particles.star"
    a, b = _exposure(tmp_path, "a.mrcs", 6, 1), _exposure(tmp_path, "b.mrcs", 6, 2)
    starfile.write({"optics": _optics(), "particles": pd.concat([a, b])}, star)
    pool = ParticlePool(tmp_path)
    assert pool.feed(star) == 12
    # rewritten shorter (b re-picked into b_tpl1): the size shrinks -> full read
    b1 = _exposure(tmp_path, "b_tpl1.mrcs", 4, 3)
    starfile.write({"optics": _optics(), "particles": pd.concat([a, b1])}, star)
    assert pool.feed(star) == 4
    assert pool.last_feed_read == "full"
    assert pool.n_retired_last == 6
    assert pool.size == 16
    assert pool.n_active == 10
    assert set(pool.stacks[~pool.active]) == {str((tmp_path / "b.mrcs").resolve())}
    # rewritten longer but with an edited earlier row: the prefix check -> full read
    c = _exposure(tmp_path, "c.mrcs", 3, 4)
    edited = pd.concat([a.iloc[1:], b1, c])
    starfile.write({"optics": _optics(), "particles": edited}, star)
    assert pool.feed(star) == 3
    assert pool.last_feed_read == "full"
    assert pool.n_retired_last == 1  # a's first row left
    assert pool.n_active == 12
    np.testing.assert_array_equal(
        pool.read_images(pool.active_rows()),
        _expected(tmp_path, ["a.mrcs", "b_tpl1.mrcs", "c.mrcs"])[1:],
    )


def test_sampled_snapshot_and_checkpoint_without_images(tmp_path: Path) -> None:
    star = tmp_path / "particles.star"
    settings = ActorSettings(
        n_classes=2,
        min_pool=20,
        psi_step_deg=30.0,
        offset_range_px=1.0,
        snapshot_sample=24,
        schedule=Schedule(n_minibatches=4, initial_min=20, final_min=20),
    )
    actor = Class2dActor(tmp_path / "Class2D", settings, seed=0, project=tmp_path)
    for k in range(4):
        append_particles_star(star, _optics(), _exposure(tmp_path, f"e{k}.mrcs", 10, k))
        actor.feed(star)
    assert actor.step()
    info = actor.snapshot()
    data = starfile.read(info.data_star, always_dict=True)["particles"]
    assert len(data) == 24
    assert info.payload["particles_assigned"] == 24
    assert info.payload["pool_particles"] == 40
    assert data["rlnImageName"].isin(actor.pool.table["rlnImageName"]).all()
    full = actor.snapshot(full=True)
    assert len(starfile.read(full.data_star, always_dict=True)["particles"]) == 40
    path = actor.checkpoint()
    with np.load(path) as npz:  # the pool index, never images: < 64 bytes a row
        pool = [npz[n] for n in npz.files if n.startswith("pool_")]
        assert all(a.ndim <= 1 for a in pool)
        assert sum(a.nbytes for a in pool if a.size == 40) < 40 * 64
    resumed = Class2dActor.resume(tmp_path / "Class2D", project=tmp_path)
    assert resumed is not None
    pd.testing.assert_frame_equal(resumed.pool.table, actor.pool.table)
    np.testing.assert_array_equal(
        resumed.pool.read_images(np.arange(40)), actor.pool.read_images(np.arange(40))
    )
    assert resumed.feed(star) == 0


def test_checkpoint_of_the_pool_before_the_index_still_resumes(tmp_path: Path) -> None:
    """The earlier checkpoint layout (STAR rows as JSON, absolute stack per row)."""
    star = tmp_path / "particles.star"
    for k in range(3):
        append_particles_star(star, _optics(), _exposure(tmp_path, f"e{k}.mrcs", 5, k))
    _, table = starfile.read(star, always_dict=True).values()
    stacks = [str((tmp_path / n.split("@")[1]).resolve()) for n in table.rlnImageName]
    active = np.ones(15, dtype=bool)
    active[5:10] = False  # e1 retired
    (tmp_path / "e1.mrcs").unlink()  # and gone
    data = {
        "pool_project": np.array(str(tmp_path)),
        "pool_stacks": np.array(stacks),
        "pool_table": np.array(table.to_json(orient="split", double_precision=15)),
        "pool_optics": np.array(_optics().to_json(orient="split")),
        "pool_active": active,
    }
    pool = ParticlePool.from_arrays(data)
    assert pool.size == 15
    np.testing.assert_array_equal(pool.active, active)
    np.testing.assert_array_equal(
        pool.read_images(pool.active_rows()),
        _expected(tmp_path, ["e0.mrcs", "e2.mrcs"]),
    )
    assert list(pool.table.rlnImageName) == list(table.rlnImageName)
    assert pool.feed(star) == 0  # e1's rows: their stack is gone, reported
    assert {p.field for p in pool.problems} == {"rlnImageName"}
