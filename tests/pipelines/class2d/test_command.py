"""``livestream class2d`` on a RELION particles STAR with simulated particles."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.cli.main import main as cli_main
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume


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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rng: np.random.Generator
) -> None:
    star, views = _write_star(tmp_path, rng)
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
    assert classes["rlnReferenceImage"].iloc[0] == "000001@run_classes.mrcs"
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
    assert code == 1
    assert "particles.mrcs" in capsys.readouterr().err
