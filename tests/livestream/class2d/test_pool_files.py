"""The pool's rows live in append-only files beside the checkpoint: the
checkpoint refers to them by length, so it does not grow with the pool; rows a
feed appended after the last checkpoint (a SIGKILL before the next one) are cut
off on resume and added again by the next feed, exactly once; a checkpoint of
the earlier layout (the rows in the checkpoint) still resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.class2d.actor import ActorSettings, Class2dActor
from livestream.class2d.pool import ParticlePool
from livestream.class2d.pool.files import INDEX_DTYPE, POOL_FOLDER
from livestream.class3d.actor import Class3dActor, Class3dSettings
from pipelines.class2d import Schedule
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import append_particles_star

BOX = 16
SETTINGS = ActorSettings(
    n_classes=2,
    min_pool=20,
    psi_step_deg=30.0,
    offset_range_px=1.0,
    snapshot_sample=24,
    schedule=Schedule(n_minibatches=4, initial_min=20, final_min=20),
)


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


def _exposures(project: Path, star: Path, first: int, n: int, per: int = 10) -> None:
    """Append ``n`` exposures (float16 stacks of ``per`` images) to ``star``."""
    for k in range(first, first + n):
        name = f"e{k:04d}.mrcs"
        images = np.random.default_rng(k).standard_normal((per, BOX, BOX))
        with mrcfile.new(project / name, overwrite=True) as mrc:
            mrc.set_data(images.astype(np.float16))
        rows = pd.DataFrame(
            {
                "rlnImageName": [f"{i:06d}@{name}" for i in range(1, per + 1)],
                "rlnCoordinateX": np.arange(per) * 1.5 + k,
                "rlnMicrographName": [f"mics/e{k:04d}.mrc"] * per,
                "rlnDefocusU": np.full(per, 10000.0 + k / 3),
                "rlnDefocusV": np.full(per, 10100.0 + k / 7),
                "rlnDefocusAngle": np.full(per, 5.0),
                "rlnOpticsGroup": np.ones(per, dtype=int),
            }
        )
        append_particles_star(star, _optics(), rows)


def _actor(kind: str, folder: Path, project: Path) -> Class2dActor | Class3dActor:
    if kind == "class2d":
        return Class2dActor(folder, SETTINGS, seed=0, project=project)
    settings = Class3dSettings(start_particles=10_000, box_px=16)
    return Class3dActor(folder, settings, seed=0, project=project)


@pytest.mark.parametrize("kind", ["class2d", "class3d"])
def test_checkpoint_size_does_not_grow_with_the_pool(tmp_path: Path, kind: str) -> None:
    star = tmp_path / "particles.star"
    actor = _actor(kind, tmp_path / "Job", tmp_path)
    _exposures(tmp_path, star, 0, 4)
    assert actor.feed(star) == 40
    if kind == "class2d":
        assert actor.step()  # the classifier's state is in the checkpoint too
    small = actor.checkpoint().stat().st_size
    _exposures(tmp_path, star, 4, 36)
    assert actor.feed(star) == 360  # the pool grows 10x
    assert actor.pool.last_feed_read == "tail"  # its rows kept as the STAR has them
    _, rows = starfile.read(star, always_dict=True).values()
    pd.testing.assert_frame_equal(actor.pool.table, rows, check_dtype=False)
    actor.pool.retire(np.arange(0, 400, 7))  # and some rows leave it
    path = actor.checkpoint()
    # the rows, which the checkpoint once held (~70 bytes a row), are in pool/
    assert path.stat().st_size - small < 256, (small, path.stat().st_size)
    assert (tmp_path / "Job" / POOL_FOLDER / "index.bin").stat().st_size == (
        400 * INDEX_DTYPE.itemsize
    )
    resumed = type(actor).resume(tmp_path / "Job", project=tmp_path)
    assert resumed is not None
    assert resumed.pool.size == 400
    np.testing.assert_array_equal(resumed.pool.active, actor.pool.active)
    pd.testing.assert_frame_equal(resumed.pool.table, actor.pool.table)
    rows = np.array([399, 3, 250])  # any order, as asked
    pd.testing.assert_frame_equal(
        resumed.pool.rows_table(rows),
        actor.pool.table.iloc[rows].reset_index(drop=True),
    )
    np.testing.assert_array_equal(
        resumed.pool.read_images(rows), actor.pool.read_images(rows)
    )
    # rows retired by hand are still in the STAR: they come back as new rows
    assert resumed.feed(star) == 58
    assert resumed.pool.size == 458


_CHILD = """
import os, signal, sys
from pathlib import Path
from livestream.class2d.actor import Class2dActor
project = Path(sys.argv[1])
actor = Class2dActor.resume(project / "Class2D", project=project)
print(actor.feed(project / "particles.star"), flush=True)  # rows appended
os.kill(os.getpid(), signal.SIGKILL)  # before the checkpoint that would cover them
"""


def test_sigkill_between_appending_rows_and_the_checkpoint(tmp_path: Path) -> None:
    star = tmp_path / "particles.star"
    _exposures(tmp_path, star, 0, 3)
    actor = Class2dActor(tmp_path / "Class2D", SETTINGS, seed=0, project=tmp_path)
    assert actor.feed(star) == 30
    assert actor.step()
    actor.checkpoint()
    _exposures(tmp_path, star, 3, 2)
    root = Path(__file__).resolve().parents[3]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["20"]  # the child appended 20 rows, then died
    pool_files = tmp_path / "Class2D" / POOL_FOLDER
    index = pool_files / "index.bin"
    assert index.stat().st_size == 50 * INDEX_DTYPE.itemsize  # on disk, uncovered

    resumed = Class2dActor.resume(tmp_path / "Class2D", project=tmp_path)
    assert resumed is not None
    assert resumed.pool.size == 30  # the checkpoint's rows, the rest cut off
    assert index.stat().st_size == 30 * INDEX_DTYPE.itemsize
    pd.testing.assert_frame_equal(resumed.pool.table, actor.pool.table)
    assert resumed.feed(star) == 20  # the rest, once
    assert resumed.feed(star) == 0
    table = resumed.pool.table
    _, rows = starfile.read(star, always_dict=True).values()
    assert list(table.rlnImageName) == list(rows.rlnImageName)  # no duplicates
    np.testing.assert_array_equal(table.rlnCoordinateX, rows.rlnCoordinateX)
    assert resumed.step()
    resumed.checkpoint()
    again = Class2dActor.resume(tmp_path / "Class2D", project=tmp_path)
    assert again is not None
    pd.testing.assert_frame_equal(again.pool.table, table)
    np.testing.assert_array_equal(
        again.pool.read_images(np.arange(50)), resumed.pool.read_images(np.arange(50))
    )


def test_pool_files_shorter_than_the_checkpoint_are_an_error_naming_them(
    tmp_path: Path,
) -> None:
    star = tmp_path / "particles.star"
    _exposures(tmp_path, star, 0, 2)
    actor = Class2dActor(tmp_path / "Class2D", SETTINGS, seed=0, project=tmp_path)
    actor.feed(star)
    actor.checkpoint()
    rows = tmp_path / "Class2D" / POOL_FOLDER / "rows.txt"
    os.truncate(rows, 10)
    with pytest.raises(StageInputError) as caught:
        Class2dActor.resume(tmp_path / "Class2D", project=tmp_path)
    assert caught.value.path == rows
    assert caught.value.field == "size"


def test_checkpoint_with_the_rows_inside_still_resumes(tmp_path: Path) -> None:
    """The layout before the pool's files: per row stack id, number, active flag
    and STAR columns (strings as codes) in the checkpoint."""
    star = tmp_path / "particles.star"
    _exposures(tmp_path, star, 0, 3, per=4)
    _, table = starfile.read(star, always_dict=True).values()
    names = [f"e{k:04d}.mrcs" for k in range(3)]
    active = np.ones(12, dtype=bool)
    active[4:8] = False
    micrographs, codes = np.unique(table.rlnMicrographName, return_inverse=True)
    data: dict[str, np.ndarray] = {
        "pool_project": np.array(str(tmp_path)),
        "pool_stack_paths": np.array([str((tmp_path / n).resolve()) for n in names]),
        "pool_stack_names": np.array(names),
        "pool_stack_id": np.repeat(np.arange(3, dtype=np.int32), 4),
        "pool_number": np.tile(np.arange(4, dtype=np.int32), 3),
        "pool_active": active,
        "pool_optics": np.array(_optics().to_json(orient="split")),
        "pool_columns": np.array(list(table.columns)),
    }
    for k, name in enumerate(table.columns):
        if name == "rlnMicrographName":
            data[f"pool_col{k}_values"] = micrographs.astype(str)
            data[f"pool_col{k}_codes"] = codes.astype(np.int32)
        elif name != "rlnImageName":
            data[f"pool_col{k}"] = table[name].to_numpy()
    pool = ParticlePool.from_arrays(data, folder=tmp_path / "pool")
    assert pool.size == 12
    np.testing.assert_array_equal(pool.active, active)
    pd.testing.assert_frame_equal(pool.table, table, check_dtype=False)
    assert pool.feed(star) == 4  # the retired rows come back as new rows
    assert pool.size == 16
