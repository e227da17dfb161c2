"""write_mdoc -> read_mdoc gives back the records it was given (property tests)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdcatch import CameraMode, Exposure, ImageKind, Optics, Session, Software
from mdcatch.serialem.mdoc import read_mdoc, scan_serialem_session
from mdcatch.serialem.writer import write_mdoc

KNOWN_KEYS = {
    "TiltAngle", "StagePosition", "StageZ", "Magnification", "ExposureDose",
    "DoseRate", "PixelSpacing", "Voltage", "SpotSize", "Defocus", "ImageShift",
    "ExposureTime", "Binning", "CameraIndex", "TargetDefocus", "SubFramePath",
    "NumSubFrames", "FrameDosesAndNumber", "DateTime", "FilterSlitAndLoss",
    "GainReference", "DefectFile", "PhasePlateInserted", "Cs", "T", "PieceCoordinates",
    "FrameTSStartEndFrames", "PriorRecordDose",
}  # fmt: skip
DETECTORS = {None: "", 0: "", 1: "BioQuantum K3", 2: "Falcon 4i"}

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)
seconds = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)
).map(lambda t: t.replace(microsecond=0, tzinfo=UTC))
keys = st.from_regex(r"\A[A-Z][A-Za-z0-9]{0,11}\Z").filter(
    lambda k: k not in KNOWN_KEYS
)
values = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
extras = st.dictionaries(keys, values, max_size=3)


@st.composite
def exposures(draw: st.DrawFn, kind: ImageKind, index: int, folder: Path) -> Exposure:
    binning = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    super_res = binning < 1
    camera_index = draw(st.sampled_from(list(DETECTORS)))
    n_frames = draw(st.integers(1, 400))
    dose = draw(st.floats(min_value=0, max_value=200, allow_nan=False))
    frame_doses = draw(st.sampled_from([(), ((n_frames, dose / n_frames),)]))
    optics = Optics(
        voltage_kv=draw(st.sampled_from([100.0, 200.0, 300.0])),
        pixel_size_a=draw(positive),
        cs_mm=draw(st.none() | st.floats(min_value=0, max_value=5)),
        detector=DETECTORS[camera_index],
        camera_mode=CameraMode.SUPER_RESOLUTION if super_res else CameraMode.COUNTING,
        super_resolution_factor=2 if super_res else 1,
        binning=binning,
        energy_filter_slit_ev=draw(st.none() | positive),
        phase_plate=draw(st.booleans()),
    )
    movie = folder / f"movie_{index:04d}.tif"
    movie.touch()
    return Exposure(
        exposure_id=movie.stem,
        software=Software.SERIALEM,
        metadata_path=folder / "x.mdoc",
        movie_path=movie,
        acquired_utc=draw(seconds),
        optics=optics,
        exposure_time_s=draw(positive),
        total_dose_e_per_a2=dose,
        n_frames=n_frames,
        target_defocus_um=draw(finite),
        kind=kind,
        dose_rate_e_per_px_s=draw(st.none() | st.floats(min_value=0, max_value=100)),
        current_defocus_um=draw(st.none() | finite),
        magnification=draw(st.none() | positive),
        spot_size=draw(st.none() | st.integers(1, 11)),
        image_shift=draw(st.none() | st.tuples(finite, finite)),
        stage_position_um=draw(st.none() | st.tuples(finite, finite, finite)),
        stage_alpha_deg=draw(st.none() | st.floats(min_value=-70, max_value=70)),
        camera_index=camera_index,
        frame_doses=frame_doses,
        extra=MappingProxyType(draw(extras)),
    )


def check_round_trip(data: st.DataObject, kind: ImageKind) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run_42"
        folder.mkdir()
        count = data.draw(st.integers(1, 4))
        records = [data.draw(exposures(kind, i, folder)) for i in range(count)]
        version = data.draw(st.sampled_from(["", "4.1.8"]))
        session = Session(
            name="run_42",
            software=Software.SERIALEM,
            session_path=folder,
            start_utc=data.draw(seconds),
            software_version=version,
        )
        path = write_mdoc(session, records, folder / "run_42.mdoc")
        read_session, read_records = read_mdoc(path)
        expected = [
            replace(e, metadata_path=path, software_version=version) for e in records
        ]
        assert read_records == expected
        assert read_session.name == session.name
        assert read_session.start_utc == session.start_utc
        assert read_session.software_version == version


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_frame_sets_round_trip(data: st.DataObject) -> None:
    check_round_trip(data, ImageKind.EXPOSURE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tilt_series_round_trip(data: st.DataObject) -> None:
    check_round_trip(data, ImageKind.TILT)


def test_real_samples_round_trip(shared_data: Path, tmp_path: Path) -> None:
    for source in sorted((shared_data / "sessions/serialem").rglob("*.mdoc")):
        session, records = read_mdoc(source)
        target = tmp_path / source.parent.name
        target.mkdir(exist_ok=True)
        _, again = read_mdoc(write_mdoc(session, records, target / source.name))
        assert len(again) == len(records)
        for before, after in zip(records, again, strict=True):
            # Only the "no Voltage" warning disappears: the writer writes one.
            assert (
                replace(after, metadata_path=source, warnings=before.warnings) == before
            )


def test_frames_prefix_writes_windows_paths(tmp_path: Path) -> None:
    source = Path(__file__)  # any record will do: build one by reading a written file
    folder = tmp_path / "s"
    folder.mkdir()
    movie = folder / "m_0001.tif"
    movie.touch()
    e = Exposure(
        exposure_id="m_0001",
        software=Software.SERIALEM,
        metadata_path=source,
        movie_path=movie,
        acquired_utc=datetime(2024, 5, 1, 12, tzinfo=UTC),
        optics=Optics(voltage_kv=300.0, pixel_size_a=1.0),
        exposure_time_s=1.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=1.5,
    )
    session = Session(name="s", software=Software.SERIALEM, session_path=folder)
    path = write_mdoc(
        session, [e], folder / "m_0001.tif.mdoc", frames_prefix="X:\\run\\"
    )
    assert "SubFramePath = X:\\run\\m_0001.tif" in path.read_text()
    _, (back,) = read_mdoc(path)
    assert back.movie_path == movie  # found next to the mdoc by name
    with pytest.raises(ValueError, match="at least one"):
        write_mdoc(session, [], folder / "empty.mdoc")


def test_single_particle_session_of_frame_mdocs_scans_back(tmp_path: Path) -> None:
    """One .tif.mdoc per movie, as SerialEM writes them, read back as one session."""
    folder = tmp_path / "grid1"
    folder.mkdir()
    session = Session(
        name="grid1",
        software=Software.SERIALEM,
        session_path=folder,
        start_utc=datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
    )
    written = []
    for i in range(3):
        movie = folder / f"grid1_{i:05d}.tif"
        movie.touch()
        e = Exposure(
            exposure_id=movie.stem,
            software=Software.SERIALEM,
            metadata_path=folder / f"{movie.name}.mdoc",
            movie_path=movie,
            acquired_utc=datetime(2024, 5, 1, 9, 10 - i, tzinfo=UTC),
            optics=Optics(voltage_kv=300.0, pixel_size_a=0.415, binning=0.5,
                          camera_mode=CameraMode.SUPER_RESOLUTION,
                          super_resolution_factor=2),
            exposure_time_s=2.0,
            total_dose_e_per_a2=50.0,
            n_frames=50,
            target_defocus_um=1.0 + 0.25 * i,
        )  # fmt: skip
        write_mdoc(session, [e], e.metadata_path)
        written.append(e)
    scanned_session, scanned = scan_serialem_session(folder)
    assert scanned == sorted(written, key=lambda e: e.acquired_utc)
    assert scanned_session.start_utc == session.start_utc
    assert scanned_session.movie_folder == folder
