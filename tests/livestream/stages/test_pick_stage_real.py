"""The live pick stage on a real float micrograph with its CTF, through the stage
function itself: its default threshold is chosen per micrograph (docs/picking.md,
*Blob*); a fixed ``threshold_sd`` stays an explicit option."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from livestream.ledger.schema import StageResult
from livestream.stages.params import PickParams
from livestream.stages.post_ctf import run_pick
from livestream.stages.task import StageTask
from mdcatch import Exposure, Optics, Software
from pipelines.io.outputs import write_mrc
from pipelines.picking.picks import read_picks_star
from tests.pipelines.pick_synthetic import match_picks
from tests.pipelines.picking.real_mrc import (
    CTF,
    DIAMETERS_A,
    PIXEL_A,
    TOLERANCE_PX,
    load_real_mrc,
)

MICROGRAPH = "MotionCorr/job002/Movies/epu29.mrc"


@pytest.fixture(scope="module")
def project(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """A project with the real micrograph where the motion stage writes it (a copy
    in the test's temporary folder), and the labels."""
    image, labels = load_real_mrc(shared_data)
    root = tmp_path_factory.mktemp("project")
    write_mrc(root / MICROGRAPH, image, pixel_size_a=PIXEL_A, float16=False)
    return root, labels


def _pick(root: Path, params: PickParams) -> tuple[StageResult, np.ndarray]:
    """Run the stage as the scheduler does; its result and its picks (x, y)."""
    motion = StageResult(
        stage="motion",
        outputs={"micrograph": MICROGRAPH},
        figures={"pixel_size_a": PIXEL_A},
    )
    ctf = StageResult(
        stage="ctf",
        figures={
            "defocus_u_a": CTF.defocus_u_a,
            "defocus_v_a": CTF.defocus_v_a,
            "astigmatism_angle_deg": CTF.astigmatism_angle_deg,
            "voltage_kv": CTF.voltage_kv,
            "cs_mm": CTF.cs_mm,
            "amplitude_contrast": CTF.amplitude_contrast,
        },
    )
    exposure = Exposure(
        exposure_id="epu29",
        software=Software.EPU,
        metadata_path=root / "epu29.xml",
        movie_path=root / "epu29.tiff",
        acquired_utc=datetime(2026, 1, 1, tzinfo=UTC),
        optics=Optics(voltage_kv=300.0, pixel_size_a=PIXEL_A, cs_mm=2.7),
        exposure_time_s=2.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=2.7,
    )
    task = StageTask(
        stage="pick",
        kind="pick",
        params=params,
        exposure=exposure,
        project_path=root,
        previous={"motion": motion, "ctf": ctf},
    )
    result = run_pick(task, params)
    picks = read_picks_star(
        root / result.outputs["coordinates"], pixel_size_a=PIXEL_A, shape=(2048, 2048)
    )
    assert result.figures["n_picks"] == len(picks)
    return result, np.column_stack([picks.x_px, picks.y_px])


def test_the_live_stage_picks_the_real_micrograph_at_its_defaults(
    project: tuple[Path, np.ndarray],
) -> None:
    """Only the diameter range given: the per-micrograph threshold finds most of the
    255 labelled particles (measured 0.88 / 0.50, as ``pick_blob`` with the CTF)."""
    root, labels = project
    params = PickParams(diameter_min_a=DIAMETERS_A[0], diameter_max_a=DIAMETERS_A[1])
    assert params.threshold_sd is None
    _, xy = _pick(root, params)
    recall, precision = match_picks(
        labels[:, 0], labels[:, 1], xy[:, 0], xy[:, 1], tolerance_px=TOLERANCE_PX
    )
    assert recall >= 0.8
    assert precision >= 0.45


def test_a_fixed_threshold_is_still_an_explicit_option(
    project: tuple[Path, np.ndarray],
) -> None:
    """``threshold_sd = 4.5`` (the old default) is honoured: the particles here
    score 2-4 robust SD, so it keeps almost none of them (measured 14 picks)."""
    root, labels = project
    params = PickParams(
        diameter_min_a=DIAMETERS_A[0], diameter_max_a=DIAMETERS_A[1], threshold_sd=4.5
    )
    _, xy = _pick(root, params)
    recall, _ = match_picks(
        labels[:, 0], labels[:, 1], xy[:, 0], xy[:, 1], tolerance_px=TOLERANCE_PX
    )
    assert 0 < len(xy) < 40
    assert recall < 0.2
