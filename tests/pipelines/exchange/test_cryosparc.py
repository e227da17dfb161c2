"""RELION particle tables <-> cryoSPARC datasets, read back by cryosparc-tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryosparc import star as cs_star
from cryosparc.dataset import Dataset

from pipelines.errors import StageInputError
from pipelines.exchange import (
    dataset_to_particles,
    particles_to_dataset,
    read_particle_set,
)
from pipelines.exchange.poses import rotvec_to_euler
from pipelines.extraction.particles_star import (
    read_particles_star,
    write_particles_star,
)
from pipelines.reconstruct.geometry import euler_to_matrix

REAL_CS = "real/cryosparc_P12_J24_001_particles.cs"
SHAPES = {
    "MotionCorr/job002/a.mrc": (3710, 3838),
    "MotionCorr/job002/b.mrc": (4096, 4096),
}


def _tables(rng: np.random.Generator, n: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographOriginalPixelSize": [0.83, 0.83],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 1.4],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": [1.66, 1.66],
            "rlnImageSize": [128, 128],
            "rlnImageDimensionality": [2, 2],
            "rlnCtfDataAreCtfPremultiplied": [0, 0],
        }
    )
    mics = np.array(sorted(SHAPES))[rng.integers(0, 2, n)]
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(0, 3838, n).round(1),
            "rlnCoordinateY": rng.uniform(0, 3710, n).round(1),
            "rlnAutopickFigureOfMerit": rng.normal(size=n),
            "rlnImageName": [
                f"{i + 1:06d}@Extract/job006/{m[-5]}.mrcs" for i, m in enumerate(mics)
            ],
            "rlnMicrographName": mics,
            "rlnOpticsGroup": rng.integers(1, 3, n),
            "rlnDefocusU": rng.uniform(8000, 30000, n),
            "rlnDefocusV": rng.uniform(8000, 30000, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n),
            "rlnCtfBfactor": rng.uniform(0, 50, n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": rng.uniform(0, 90, n),
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.uniform(-8, 8, n),
            "rlnOriginYAngst": rng.uniform(-8, 8, n),
            "rlnClassNumber": rng.integers(1, 4, n),
            "rlnRandomSubset": rng.integers(1, 3, n),
        }
    )
    return optics, particles


def test_star_to_cs_to_star_round_trip(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    optics, particles = _tables(rng)
    star = write_particles_star(tmp_path / "particles.star", optics, particles)
    optics, particles = read_particles_star(star)
    dataset = particles_to_dataset(
        optics, particles, source=star, micrograph_shapes=SHAPES
    )
    dataset.save(tmp_path / "particles.cs")
    loaded = Dataset.load(tmp_path / "particles.cs")  # cryosparc-tools reads it back
    assert loaded == dataset
    assert len(set(loaded["uid"].tolist())) == len(particles)
    assert loaded["blob/shape"].tolist()[0] == [128, 128]
    assert set(loaded["ctf/exp_group_id"].tolist()) == {1, 2}
    np.testing.assert_array_equal(
        loaded["location/micrograph_shape"][0],
        SHAPES[particles["rlnMicrographName"].iloc[0]],
    )
    new_optics, back = dataset_to_particles(loaded, source=tmp_path / "particles.cs")
    pd.testing.assert_frame_equal(
        new_optics[optics.columns.drop("rlnMicrographOriginalPixelSize")],
        optics.drop(columns="rlnMicrographOriginalPixelSize"),
        check_dtype=False,
        rtol=1e-6,
    )
    for column in (
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnAutopickFigureOfMerit",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnCtfBfactor",
        "rlnPhaseShift",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
    ):
        np.testing.assert_allclose(
            back[column], particles[column], rtol=2e-6, atol=2e-4
        )
    for column in (
        "rlnImageName",
        "rlnMicrographName",
        "rlnOpticsGroup",
        "rlnClassNumber",
        "rlnRandomSubset",
    ):
        assert back[column].tolist() == particles[column].tolist()
    np.testing.assert_allclose(
        euler_to_matrix(back["rlnAngleRot"], back["rlnAngleTilt"], back["rlnAnglePsi"]),
        euler_to_matrix(
            particles["rlnAngleRot"],
            particles["rlnAngleTilt"],
            particles["rlnAnglePsi"],
        ),
        atol=1e-6,  # the pose is float32 in the .cs
    )
    # uids are a hash of the image name: a second export gives the same ones
    again = particles_to_dataset(
        optics, particles, source=star, micrograph_shapes=SHAPES
    )
    assert again["uid"].tolist() == dataset["uid"].tolist()


def test_alignments2d_from_a_class2d_table(rng: np.random.Generator) -> None:
    optics, particles = _tables(rng, 20)
    particles = particles.drop(columns=["rlnAngleRot", "rlnAngleTilt"])
    classified = particles.iloc[:15].copy()
    classified["rlnClassNumber"] = np.arange(15) % 5 + 1
    classified["rlnAnglePsi"] = np.linspace(-170, 170, 15)
    classified["rlnMaxValueProbDistribution"] = 0.5
    dataset = particles_to_dataset(
        optics, particles, source="<test>", alignments2d=classified
    )
    assert "alignments3D/pose" not in dataset.fields()
    assert dataset["alignments2D/class"][:15].tolist() == (np.arange(15) % 5).tolist()
    np.testing.assert_allclose(
        dataset["alignments2D/pose"][:15],
        np.deg2rad(classified["rlnAnglePsi"]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        dataset["alignments2D/shift"][:15, 0] * 1.66,
        classified["rlnOriginXAngst"],
        rtol=1e-5,
    )
    assert dataset["alignments2D/class_posterior"].tolist() == [0.5] * 15 + [0.0] * 5
    _, back = dataset_to_particles(dataset, source="<test>")
    np.testing.assert_allclose(
        back["rlnAnglePsi"][:15], classified["rlnAnglePsi"], atol=1e-4
    )


def test_real_cryosparc_particles_import(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / REAL_CS
    dataset = Dataset.load(path)
    optics, particles = dataset_to_particles(dataset, source=path)
    assert len(particles) == 2019
    assert optics[
        ["rlnVoltage", "rlnSphericalAberration", "rlnImageSize"]
    ].values.tolist() == [[200.0, 2.0, 180.0]]
    assert particles["rlnImageName"].iloc[0].startswith("000001@J19/extract/")
    np.testing.assert_allclose(
        particles["rlnDefocusAngle"], np.rad2deg(dataset["ctf/df_angle_rad"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        particles["rlnOriginXAngst"],
        dataset["alignments3D/shift"][:, 0] * 2.95,
        rtol=1e-6,
    )
    assert (
        particles["rlnRandomSubset"].tolist()
        == (dataset["alignments3D/split"] + 1).tolist()
    )
    np.testing.assert_allclose(
        particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(),
        rotvec_to_euler(dataset["alignments3D/pose"]),
    )
    star = write_particles_star(tmp_path / "particles.star", optics, particles)
    blocks = cs_star.read(star)  # cryosparc-tools' own STAR reader
    assert len(blocks["particles"]) == 2019
    np.testing.assert_allclose(
        blocks["particles"]["rlnDefocusU"], particles["rlnDefocusU"], rtol=1e-6
    )
    assert read_particle_set(star).viewing_directions().shape == (2019, 3)


def test_missing_ctf_field_names_file_and_field(shared_data: Path) -> None:
    path = shared_data / REAL_CS
    dataset = Dataset.load(path).drop_fields(["ctf/accel_kv"])
    with pytest.raises(StageInputError, match="ctf/accel_kv") as error:
        dataset_to_particles(dataset, source=path)
    assert str(path) in str(error.value)


def test_bad_image_name_is_named(rng: np.random.Generator) -> None:
    optics, particles = _tables(rng, 5)
    particles.loc[3, "rlnImageName"] = "Extract/job006/a.mrcs"
    with pytest.raises(StageInputError, match="rlnImageName"):
        particles_to_dataset(optics, particles, source="p.star")
    with pytest.raises(StageInputError, match="micrograph size unknown"):
        particles_to_dataset(
            optics, particles.iloc[:3], source="p.star", micrograph_shapes={}
        )
