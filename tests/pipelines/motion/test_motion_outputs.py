"""run_motion writes RELION-readable files; the STARs hold what was measured."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile

from pipelines.errors import StageInputError
from pipelines.motion.job import (
    CorrectedMicrograph,
    CorrectedOptics,
    run_motion,
    write_corrected_micrographs_star,
)
from tests.pipelines.motion_movies import make_movie, random_eer_events, write_eer


def write_mrc_movie(path, frames):
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames.astype(np.float32))


def test_run_motion_writes_micrographs_spectrum_and_star(tmp_path, rng):
    movie = make_movie(rng, n_frames=10, size=256)
    path = tmp_path / "Movies" / "FoilHole_1_Data_2.mrc"
    path.parent.mkdir()
    write_mrc_movie(path, movie.frames)
    out_dir = tmp_path / "MotionCorr" / "job002" / "Movies"
    outputs = run_motion(
        path,
        out_dir,
        pixel_size_a=0.9,
        dose_per_frame_e_per_a2=1.2,
        voltage_kv=300,
        patches=(3, 3),
        movie_name="Movies/FoilHole_1_Data_2.mrc",
        save_no_dw=True,
    )
    assert outputs.micrograph_path == out_dir / "FoilHole_1_Data_2.mrc"
    with mrcfile.open(outputs.micrograph_path) as mrc:
        assert mrc.header.mode == 12  # float16
        assert mrc.data.shape == (256, 256)
        assert float(mrc.voxel_size.x) == pytest.approx(0.9)
    with mrcfile.open(outputs.micrograph_no_dw_path) as mrc:
        assert mrc.data.shape == (256, 256)
    with mrcfile.open(outputs.power_spectrum_path) as mrc:
        assert mrc.data.shape == (256, 256)
    assert not list(out_dir.glob(".*partial"))

    star = starfile.read(outputs.star_path, always_dict=True)
    general = star["general"]
    assert general["rlnImageSizeX"] == 256
    assert general["rlnImageSizeZ"] == 10
    assert general["rlnMicrographMovieName"] == "Movies/FoilHole_1_Data_2.mrc"
    assert general["rlnMicrographOriginalPixelSize"] == pytest.approx(0.9)
    assert general["rlnMicrographDoseRate"] == pytest.approx(1.2)
    # the movie has no local motion: the F-test rejects a polynomial fitted to noise
    assert general["rlnMotionModelVersion"] == 0
    shifts = star["global_shift"]
    assert list(shifts["rlnMicrographFrameNumber"]) == list(range(1, 11))
    assert np.allclose(
        shifts["rlnMicrographShiftX"], outputs.shifts_px[:, 0], atol=1e-5
    )
    truth = -(movie.drift_px - movie.drift_px[0])
    assert np.sqrt(np.mean(np.sum((outputs.shifts_px - truth) ** 2, axis=1))) < 0.15
    assert "local_motion_model" not in star
    assert "local_shift" not in star
    assert outputs.total_motion_a == pytest.approx(
        0.9 * np.linalg.norm(np.diff(outputs.shifts_px, axis=0), axis=1).sum()
    )


def test_float32_on_request(tmp_path, rng):
    movie = make_movie(rng, n_frames=6, size=128)
    path = tmp_path / "m.mrc"
    write_mrc_movie(path, movie.frames)
    outputs = run_motion(
        path,
        tmp_path / "out",
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.5,
        voltage_kv=200,
        float32=True,
        patches=None,
    )
    with mrcfile.open(outputs.micrograph_path) as mrc:
        assert mrc.header.mode == 2
    # the plain sum only on request (save_no_dw, RELION's --save_noDW)
    assert outputs.micrograph_no_dw_path is None
    assert not list((tmp_path / "out").glob("*_noDW.mrc"))
    star = starfile.read(outputs.star_path, always_dict=True)
    assert star["general"]["rlnMotionModelVersion"] == 0
    assert "local_motion_model" not in star


def test_tiff_movie_with_rotated_gain_reference(tmp_path, rng):
    sensitivity = np.clip(1.0 + 0.25 * rng.standard_normal((128, 128)), 0.4, 1.6)
    movie = make_movie(
        rng, n_frames=8, size=128, sensitivity=sensitivity, drift_px=np.zeros((8, 2))
    )
    path = tmp_path / "movie.tiff"
    tifffile.imwrite(path, movie.frames.astype(np.uint8), compression="lzw")
    gain = (1.0 / sensitivity).astype(np.float32)
    gain_path = tmp_path / "gain.mrc"
    with mrcfile.new(gain_path) as mrc:
        # stored as the camera writes it: rotated clockwise, i.e. needs +90° to match
        mrc.set_data(np.ascontiguousarray(np.rot90(gain, -1)))
    kwargs = {
        "pixel_size_a": 1.0,
        "dose_per_frame_e_per_a2": 1.5,
        "voltage_kv": 300,
        "patches": None,
        "save_no_dw": True,
    }
    right = run_motion(
        path, tmp_path / "right", gain_path=gain_path, gain_rotation_deg=90, **kwargs
    )
    wrong = run_motion(
        path, tmp_path / "wrong", gain_path=gain_path, gain_rotation_deg=0, **kwargs
    )
    pattern = sensitivity.ravel() - sensitivity.mean()

    def corr(p):
        return abs(
            float(np.corrcoef(mrcfile.read(p).astype(float).ravel(), pattern)[0, 1])
        )

    assert (
        corr(right.micrograph_no_dw_path)
        < 0.05
        < 0.3
        < corr(wrong.micrograph_no_dw_path)
    )
    with pytest.raises(StageInputError, match="gain"):
        run_motion(path, tmp_path / "x", gain_path=tmp_path / "nope.mrc", **kwargs)


def test_eer_movie_grouped_to_target_dose(tmp_path, rng):
    shape = (64, 64)
    path = tmp_path / "movie.eer"
    write_eer(str(path), random_eer_events(rng, 40, shape, rate=0.05), shape)
    outputs = run_motion(
        path,
        tmp_path / "out",
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=0.05,
        voltage_kv=300,
        eer_group_dose_e_per_a2=0.5,
        patches=None,
    )
    assert outputs.n_frames == 4  # 40 raw frames in groups of 10
    star = starfile.read(outputs.star_path, always_dict=True)
    assert star["general"]["rlnMicrographDoseRate"] == pytest.approx(0.5)
    assert star["general"]["rlnEERGrouping"] == 10
    assert star["general"]["rlnEERUpsampling"] == 1
    up = run_motion(
        path,
        tmp_path / "up",
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=0.05,
        voltage_kv=300,
        eer_group_dose_e_per_a2=0.5,
        eer_upsampling=2,
        patches=None,
    )
    assert mrcfile.read(up.micrograph_path).shape == (128, 128)
    assert up.pixel_size_a == pytest.approx(0.5)


def test_corrected_micrographs_star_round_trips(tmp_path):
    optics = [
        CorrectedOptics(
            optics_group=1,
            optics_group_name="opticsGroup1",
            original_pixel_size_a=0.83,
            micrograph_pixel_size_a=0.83,
            voltage_kv=300,
            cs_mm=2.7,
            amplitude_contrast=0.1,
        )
    ]
    rows = [
        CorrectedMicrograph(
            micrograph_name=f"MotionCorr/job002/Movies/m{i}.mrc",
            metadata_name=f"MotionCorr/job002/Movies/m{i}.star",
            power_spectrum_name=f"MotionCorr/job002/Movies/m{i}_PS.mrc",
            optics_group=1,
            accum_motion_total_a=10.0 + i,
            accum_motion_early_a=4.0,
            accum_motion_late_a=6.0 + i,
        )
        for i in range(3)
    ]
    path = write_corrected_micrographs_star(
        tmp_path / "corrected_micrographs.star", rows, optics
    )
    star = starfile.read(path, always_dict=True)
    assert star["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(0.83)
    table = star["micrographs"]
    assert list(table["rlnMicrographName"]) == [r.micrograph_name for r in rows]
    assert list(table["rlnAccumMotionLate"]) == [6.0, 7.0, 8.0]
    assert set(table.columns) >= {
        "rlnCtfPowerSpectrum",
        "rlnMicrographMetadata",
        "rlnOpticsGroup",
    }
    bad = [
        CorrectedMicrograph(
            **{**{f: getattr(rows[0], f) for f in rows[0].__slots__}, "optics_group": 2}
        )
    ]
    with pytest.raises(ValueError, match="optics groups"):
        write_corrected_micrographs_star(tmp_path / "bad.star", bad, optics)
