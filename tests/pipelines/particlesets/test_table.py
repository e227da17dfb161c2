"""The strict STAR reader: values kept as written, bad input named by line/column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.particlesets import read_star_tables, relion30_labels
from pipelines.reconstruct import PosedParticles, write_posed_particles
from pipelines.simulate.projection import random_rotations

GOOD = """\
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 1.5

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnOriginXAngst #3
_rlnOpticsGroup #4
000001@a.mrcs 10.5 -3.0 1

000002@a.mrcs 1.000000e+01 0.75 1
# a comment
000003@a.mrcs -20 1.5 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.star"
    path.write_text(text)
    return path


def test_reads_blocks_values_as_written_and_line_numbers(tmp_path: Path) -> None:
    tables = read_star_tables(_write(tmp_path, GOOD))
    assert list(tables) == ["optics", "particles"]
    particles = tables["particles"]
    assert particles.frame["rlnAngleRot"].tolist() == ["10.5", "1.000000e+01", "-20"]
    assert particles.lines.tolist() == [20, 22, 24]
    assert particles.numbers("rlnOriginXAngst").tolist() == [-3.0, 0.75, 1.5]


def test_label_value_pairs_block(tmp_path: Path) -> None:
    text = "data_general\n\n_rlnNrClasses 4\n_rlnReferenceDimensionality 3\n"
    table = read_star_tables(_write(tmp_path, text))["general"]
    assert not table.is_loop
    assert table.as_block() == {"rlnNrClasses": "4", "rlnReferenceDimensionality": "3"}


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("-20 1.5 1\n", "-20 1.5 1 9\n", "line 24, column 5"),  # one too many
        ("0.75 1\n", "0.75\n", "line 22, column 4"),  # one too few
        ("10.5 -3.0", "nan -3.0", "line 20, column 2 (rlnAngleRot)"),
        ("10.5 -3.0", "ten -3.0", "line 20, column 2 (rlnAngleRot)"),
        ("1 opticsGroup1 1.5", "1 opticsGroup1 inf", "line 9, column 3"),
        ("_rlnOriginXAngst #3", "_rlnOriginXAngstrom #3", "line 18, column 3"),
        ("data_optics\n", "", "line 4, column 1"),  # loop_ outside a block
    ],
)
def test_bad_input_names_file_line_and_column(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(StageInputError) as err:
        read_star_tables(path)
    assert str(path) in str(err.value)
    assert where in str(err.value)


def test_stray_text_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match=r"line 4, column 1.*not inside a loop_"):
        read_star_tables(
            _write(tmp_path, GOOD.replace("optics\n", "optics\noops\n", 1))
        )
    # stray text after a loop's rows is a row with the wrong number of values
    with pytest.raises(StageInputError, match="line 10, column 2"):
        read_star_tables(_write(tmp_path, GOOD.replace("1.5\n", "1.5\noops\n", 1)))
    with pytest.raises(StageInputError, match="no STAR table"):
        read_star_tables(_write(tmp_path, "# nothing\n"))


def test_relion30_labels() -> None:
    labels = relion30_labels()
    assert {"rlnOriginX", "rlnMagnification", "rlnDetectorPixelSize"} <= labels
    assert not {"rlnOriginXAngst", "rlnOpticsGroup", "rlnImagePixelSize"} & labels


def test_real_relion31_file(shared_data: Path) -> None:
    tables = read_star_tables(shared_data / "real" / "relion31.star")
    assert len(tables["particles"].frame) == 5
    assert tables["optics"].numbers("rlnImagePixelSize").tolist() == [2.806]


def test_our_particle_writer_passes_the_strict_reader(tmp_path: Path) -> None:
    # what livestream reconstruct reads (and relion_reconstruct read unchanged)
    rng = np.random.default_rng(4)
    particles = PosedParticles.from_arrays(
        rng.standard_normal((6, 16, 16)).astype(np.float32),
        pixel_size_a=2.0,
        rotations=random_rotations(6, rng),
        origin_px=rng.uniform(-2, 2, (6, 2)),
        defocus_u_a=15000.0,
    )
    star = write_posed_particles(tmp_path / "p.star", particles, stack_name="p.mrcs")
    tables = read_star_tables(star)
    assert len(tables["particles"].frame) == 6
    np.testing.assert_allclose(
        tables["particles"].numbers("rlnOriginXAngst"),
        particles.origin_px[:, 0] * 2,
        atol=1e-6,  # written with 6 decimals
    )
