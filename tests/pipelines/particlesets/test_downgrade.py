"""RELION 3.1+ -> 3.0: pixel size on each row, origins in pixels, only 3.0 labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.particlesets import (
    downgrade_to_relion30,
    main_table_name,
    read_star_tables,
    relion30_labels,
)

TWO_GROUPS = """\
data_optics

loop_
_rlnOpticsGroup
_rlnOpticsGroupName
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImagePixelSize
_rlnImageSize
_rlnBeamTiltX
2 g2 200 2.7 0.1 2.0 64 0.5
1 g1 300 0.01 0.07 1.0 64 0.0

data_particles

loop_
_rlnImageName
_rlnOriginXAngst
_rlnOriginYAngst
_rlnOpticsGroup
1@a.mrcs 3.0 -1.0 1
2@a.mrcs 3.0 -1.0 2
3@a.mrcs 0.5 4.0 2
"""


def test_two_optics_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.star"
    path.write_text(TWO_GROUPS)
    tables = read_star_tables(path)
    result = downgrade_to_relion30(path, tables["optics"], tables["particles"])
    out = result.table
    assert set(out.columns) <= relion30_labels()
    assert set(result.dropped_labels) == {
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        "rlnImagePixelSize",
    }
    np.testing.assert_allclose(out["rlnOriginX"], [3.0, 1.5, 0.25])
    np.testing.assert_allclose(out["rlnOriginY"], [-1.0, -0.5, 2.0])
    pixel = 10000 * out["rlnDetectorPixelSize"] / out["rlnMagnification"]
    np.testing.assert_allclose(pixel, [1.0, 2.0, 2.0])
    assert out["rlnVoltage"].tolist() == ["300", "200", "200"]
    assert out["rlnBeamTiltX"].tolist() == ["0.0", "0.5", "0.5"]
    assert out["rlnImageName"].tolist() == ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]


def test_unknown_group_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.star"
    path.write_text(TWO_GROUPS.replace("3.0 -1.0 2\n", "3.0 -1.0 5\n"))
    tables = read_star_tables(path)
    with pytest.raises(StageInputError, match=r"line 23, column 4 \(rlnOpticsGroup\)"):
        downgrade_to_relion30(path, tables["optics"], tables["particles"])


def test_real_relion31_file(shared_data: Path) -> None:
    path = shared_data / "real" / "relion31.star"
    tables = read_star_tables(path)
    out = downgrade_to_relion30(path, tables["optics"], tables["particles"]).table
    origin_a = tables["particles"].numbers("rlnOriginXAngst")
    np.testing.assert_allclose(out["rlnOriginX"], origin_a / 2.806)
    assert set(out.columns) <= relion30_labels()
    assert (out["rlnDetectorPixelSize"] == 2.806).all()


def test_micrographs_star(tmp_path: Path) -> None:
    path = tmp_path / "micrographs.star"
    path.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnMicrographPixelSize\n1 0.8\n\n"
        "data_micrographs\nloop_\n_rlnMicrographName\n_rlnOpticsGroup\na.mrc 1\n"
    )
    tables = read_star_tables(path)
    name = main_table_name(path, tables)
    assert name == "micrographs"
    out = downgrade_to_relion30(path, tables["optics"], tables[name]).table
    assert out["rlnDetectorPixelSize"].tolist() == [0.8]
    assert out["rlnMicrographName"].tolist() == ["a.mrc"]
