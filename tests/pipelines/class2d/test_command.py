"""``livestream class2d`` on a RELION particles STAR with simulated particles."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.cli.main import main as cli_main
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume
from tests.livestream.cli.terminal import FakeTerminal


def _write_star(folder: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    volume = phantom_volume(24, 4.0, rng)
    data = simulate_views(
        volume, n_views=2, n_particles=240, pixel_size_a=4.0, snr=0.5, rng=rng
    )
    optics, particles = write_particle_set(folder, "Extract/particles.mrcs", data, 4.0)
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    return star, data.view_index


def test_class2d_command_writes_relion_outputs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    star, views = _write_star(tmp_path, rng)
    terminal = FakeTerminal()  # even on a terminal, --json prints no progress
    monkeypatch.setattr(sys, "stderr", terminal)
    out = tmp_path / "Class2D"
    code = cli_main(
        [
            "class2d",
            str(star),
            "--classes",
            "3",
            "--out",
            str(out),
            "--mini-batches",
            "5",
            "--seed",
            "2",
            "--psi-step-deg",
            "20",
            "--offset-range-px",
            "2",
            "--json",
        ]
    )
    assert code == 0
    assert terminal.getvalue() == ""
    summary = json.loads(capsys.readouterr().out)
    for key in (
        "class_counts",
        "seconds",
        "particles_per_second",
        "classes_mrcs",
        "selected_star",
    ):
        assert key in summary
    assert sum(summary["class_counts"]) == 240
    with mrcfile.open(summary["classes_mrcs"]) as mrc:
        assert mrc.data.shape == (3, 24, 24)
        assert mrc.voxel_size.x == pytest.approx(4.0)
    model = starfile.read(out / "run_model.star", always_dict=True)
    classes = model["model_classes"]
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1.0)
    # relative to the project: the folder two levels above the job folder
    stem = f"run_it{summary['mini_batches']:03d}"
    classes_name = os.path.relpath(out / f"{stem}_classes.mrcs", out.parent.parent)
    assert classes["rlnReferenceImage"].iloc[0] == f"000001@{classes_name}"
    assert (out / "run_model.star").readlink() == Path(f"{stem}_model.star")
    optimiser = starfile.read(out / "run_optimiser.star")
    assert optimiser["rlnModelStarFile"] == os.path.relpath(
        out / f"{stem}_model.star", out.parent.parent
    )
    assert optimiser["rlnCurrentIteration"] == summary["mini_batches"]
    data = starfile.read(out / "run_data.star", always_dict=True)["particles"]
    assert len(data) == 240
    assert set(data["rlnClassNumber"]) <= {1, 2, 3}
    for column in (
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnMaxValueProbDistribution",
    ):
        assert column in data.columns
    assert data["rlnMaxValueProbDistribution"].between(0, 1).all()
    # the two views end in different classes
    purity = pd.crosstab(data["rlnClassNumber"], views).max(axis=1).sum() / 240
    print(
        f"command run: purity {purity:.3f}, {summary['particles_per_second']} particles/s"
    )
    assert purity > 0.9
    assert Path(summary["selected_star"]).exists()


def test_class2d_command_names_missing_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rng: np.random.Generator
) -> None:
    star, _ = _write_star(tmp_path, rng)
    (tmp_path / "Extract" / "particles.mrcs").unlink()
    code = cli_main(
        ["class2d", str(star), "--classes", "2", "--out", str(tmp_path / "o")]
    )
    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "particles.mrcs" in line


def test_class2d_command_shows_mini_batches_on_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    star, _ = _write_star(tmp_path, rng)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["class2d", str(star), "--classes", "2", "--out", str(tmp_path / "o")]
    argv += ["--mini-batches", "3", "--psi-step-deg", "30", "--offset-range-px", "1"]
    assert cli_main(argv) == 0
    drawn = terminal.getvalue()
    for done in (1, 2, 3):  # drawn after each mini-batch, through on_progress
        assert f"{done}/3" in drawn
    assert "mini-batch" in drawn
    assert "240 particles" in capsys.readouterr().out
