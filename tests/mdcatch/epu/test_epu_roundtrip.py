"""Writer -> reader round trips: a record the reader can produce reads back equal.

Property-based over realistic value ranges (hypothesis), plus the real samples
(read -> write -> read).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdcatch import CameraMode, ImageKind, MovieFormat, Software
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.fractionation import fraction_doses
from mdcatch.epu.session import read_epu_session_file
from mdcatch.epu.writer import (
    epu_exposure_relpath,
    write_epu_exposure_xml,
    write_epu_session_file,
)
from mdcatch.records import Exposure, Optics, Session

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(
        lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False
    )


_KEY = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz[]._0123456789",
    min_size=1,
    max_size=20,
)
_VALUE = st.text(
    st.characters(
        min_codepoint=33, max_codepoint=0x7E0, exclude_categories=["Cs", "Cc"]
    ),
    min_size=1,
    max_size=30,
)
_MODES = st.sampled_from(
    [
        (CameraMode.INTEGRATING, 1),
        (CameraMode.COUNTING, 1),
        (CameraMode.SUPER_RESOLUTION, 2),
    ]
)
_RESERVED = {
    "CameraName",
    "FractionationSettings",
    "DoseFractions",
    "ReadoutArea",
    "ProbeMode",
}
_RESERVED |= {
    "Dose",
    "DoseRate",
    "AppliedDefocus",
    "PhasePlateUsed",
    "DetectorCommercialName",
}


def _maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


@st.composite
def exposures(draw: st.DrawFn, folder: Path) -> Exposure:
    acquired = draw(
        st.datetimes(datetime(2005, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC))
    )
    relpath = epu_exposure_relpath(
        str(draw(st.integers(1, 10**9))),
        str(draw(st.integers(1, 10**9))),
        f"{draw(st.integers(1, 10**9))}_{draw(st.integers(1, 10**9))}",
        acquired,
    )
    path = folder / relpath
    mode, sr_factor = draw(_MODES)
    camera = draw(st.sampled_from(["BM-Falcon", "EF-CCD", "BM-Ceta"]))
    detector = draw(st.sampled_from([camera, "BioQuantum K3", "Falcon 4i"]))
    dose = draw(_floats(0.5, 200.0))
    counts = draw(_maybe(st.lists(st.integers(1, 120), min_size=1, max_size=60)))
    drawn = draw(st.dictionaries(_KEY, _VALUE, max_size=5))
    extra = {k: v.strip() for k, v in drawn.items() if k not in _RESERVED and v.strip()}
    extra["CameraName"] = camera
    frame_doses: tuple[tuple[int, float], ...] = ()
    if counts is None:
        n_frames = draw(st.integers(1, 2000))
        extra["FractionationSettings"] = "EquidistantFractionation"
    else:
        starts = [1 + sum(counts[:i]) for i in range(len(counts))]
        ranges = tuple((s, s + c - 1) for s, c in zip(starts, counts, strict=True))
        n_frames = len(counts)
        extra["FractionationSettings"] = "VaridistantFractionation"
        extra["DoseFractions"] = ",".join(f"{s}-{e}" for s, e in ranges)
        frame_doses = fraction_doses(ranges, dose)
    if draw(st.booleans()):
        extra["ReadoutArea"] = (
            f"{draw(st.integers(1, 12000))}x{draw(st.integers(1, 12000))}"
        )
    if draw(st.booleans()):
        extra["ProbeMode"] = draw(st.sampled_from(["NanoProbe", "MicroProbe"]))
    pair = st.tuples(_floats(-1.0, 1.0), _floats(-1.0, 1.0))
    return Exposure(
        exposure_id=path.stem,
        software=Software.EPU,
        metadata_path=path,
        movie_path=draw(_maybe(st.just(folder / f"{path.stem}_Fractions.tiff"))),  # type: ignore[arg-type]
        acquired_utc=acquired,
        optics=Optics(
            voltage_kv=draw(
                st.sampled_from([80.0, 120.0, 200.0, 300.0]) | _floats(10.0, 400.0)
            ),
            pixel_size_a=draw(_floats(0.2, 600.0)),
            detector=detector,
            camera_mode=mode,
            super_resolution_factor=sr_factor,
            # super-resolution pixels survive only unbinned (binning < factor)
            binning=1.0
            if mode is CameraMode.SUPER_RESOLUTION
            else float(draw(st.integers(1, 8))),
            energy_filter_slit_ev=draw(_maybe(_floats(1.0, 100.0))),  # type: ignore[arg-type]
            phase_plate=draw(st.booleans()),
            instrument_id=str(draw(st.integers(1000, 9999))),
        ),
        exposure_time_s=draw(_floats(0.05, 120.0)),
        total_dose_e_per_a2=dose,
        n_frames=n_frames,
        target_defocus_um=draw(_floats(-3.0, 10.0)),
        kind=ImageKind.EXPOSURE,
        dose_rate_e_per_px_s=draw(_maybe(_floats(0.0, 100.0))),  # type: ignore[arg-type]
        current_defocus_um=draw(_maybe(_floats(-100.0, 100.0))),  # type: ignore[arg-type]
        magnification=draw(_maybe(_floats(50.0, 1_000_000.0))),  # type: ignore[arg-type]
        spot_size=draw(_maybe(st.integers(1, 11))),  # type: ignore[arg-type]
        beam_shift=draw(_maybe(pair)),  # type: ignore[arg-type]
        image_shift=draw(_maybe(pair)),  # type: ignore[arg-type]
        stage_position_um=draw(_maybe(st.tuples(*[_floats(-1000.0, 1000.0)] * 3))),  # type: ignore[arg-type]
        stage_alpha_deg=draw(_maybe(_floats(-80.0, 80.0))),  # type: ignore[arg-type]
        grid_square_id=relpath.parts[1].removeprefix("GridSquare_"),
        foil_hole_id=relpath.name.split("_")[1],
        software_version=draw(st.sampled_from(["2.6.1.69", "3.9.1.8206", ""])),
        frame_doses=frame_doses,
        extra=extra,
    )


@SETTINGS
@given(data=st.data())
def test_exposure_round_trip(tmp_path: Path, data: st.DataObject) -> None:
    original = data.draw(exposures(tmp_path))
    written = write_epu_exposure_xml(original, original.metadata_path)
    assert written == original.metadata_path
    assert b"\n" not in written.read_bytes()  # one long line, as EPU writes it
    assert read_epu_exposure(written, movie_path=original.movie_path) == original


@SETTINGS
@given(
    name=st.text("abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=40),
    start=st.none()
    | st.datetimes(datetime(2005, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    output=st.sampled_from(["Tiff Lzw Non-Gain normalized", "Mrc", "EER", "TIFF"]),
    defocus=st.lists(_floats(0.1, 5.0), max_size=8, unique=True),
    squares=st.lists(st.integers(1, 10**9), max_size=50, unique=True),
    version=st.sampled_from(["3.9.1.8206", "2.12.1.2782", ""]),
    storage=st.sampled_from(
        ["", "Z:\\DoseFractions\\cm40593-1", "\\\\server\\share\\s"]
    ),
)
def test_session_round_trip(
    tmp_path: Path,
    name: str,
    start: datetime | None,
    output: str,
    defocus: list[float],
    squares: list[int],
    version: str,
    storage: str,
) -> None:
    fmt = {"T": MovieFormat.TIFF, "M": MovieFormat.MRC, "E": MovieFormat.EER}[output[0]]
    original = Session(
        name=name,
        software=Software.EPU,
        session_path=tmp_path,
        start_utc=start,
        storage_folder_raw=storage,
        movie_format=fmt,
        output_format_raw=output,
        image_file_format="Mrc",
        defocus_list_um=tuple(defocus),
        grid_square_ids=tuple(str(s) for s in squares),
        software_version=version,
        extra={"GridType": "HoleyCarbon"},
    )
    path = write_epu_session_file(original, tmp_path / "EpuSession.dm")
    assert read_epu_session_file(path) == original


@pytest.mark.parametrize(
    "relpath",
    [
        "sessions/epu/MDCatch/FoilHole_18890345_Data_18881924_18881926_20200320_090200.xml",
        "sessions/epu/MDCatch/FoilHole_22011316_Data_19957701_19957703_20200323_100235.xml",
        "sessions/epu/smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/Data/FoilHole_9015883_Data_9017347_6_20250108_154915.xml",
        "sessions/epu/smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/GridSquare_20250108_151151.xml",
    ],
)
def test_real_files_round_trip(shared_data: Path, tmp_path: Path, relpath: str) -> None:
    original = read_epu_exposure(shared_data / relpath)
    out = tmp_path / Path(relpath).relative_to(Path(relpath).parents[2])
    copy = read_epu_exposure(write_epu_exposure_xml(original, out))
    assert dataclasses.replace(copy, metadata_path=original.metadata_path) == original


def test_real_session_round_trip(shared_data: Path, tmp_path: Path) -> None:
    dm = shared_data / "sessions/epu/smartem-decisions/epu-dir-example/EpuSession.dm"
    original = read_epu_session_file(dm)
    copy = read_epu_session_file(
        write_epu_session_file(original, tmp_path / "EpuSession.dm")
    )
    assert dataclasses.replace(copy, session_path=original.session_path) == original
