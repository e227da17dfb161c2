"""Fuzz the EPU readers with mutated real files: nothing but MetadataError escapes.

Mutations: truncation at any byte offset (what EPU leaves after a crash), byte
flips, deleted elements and replaced values.  Seeded by hypothesis; about 10 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from mdcatch import Exposure, MetadataError, Session
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.session import read_epu_session_file

EPU = Path("sessions/epu")
XMLS = sorted(
    [
        "MDCatch/FoilHole_18890345_Data_18881924_18881926_20200320_090200.xml",
        "MDCatch/FoilHole_22011316_Data_19957701_19957703_20200323_100235.xml",
        "smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/Data/FoilHole_9015883_Data_9017347_6_20250108_154915.xml",
        "smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/FoilHoles/FoilHole_9015889_20250108_154725.xml",
        "smartem-decisions/epu-dir-example/Images-Disc1/GridSquare_8999138/GridSquare_20250108_151151.xml",
    ]
)
SESSION = "smartem-decisions/epu-dir-example/EpuSession.dm"
REPLACEMENTS = [
    "",
    "0",
    "-1",
    "-0",
    "NaN",
    "INF",
    "-INF",
    "1E+400",
    "1E-400",
    "1e999999999",
    "abc",
    "true",
    "false",
    "99999999999999999999999999999",
    "2026-13-45T99:99:99Z",
    "2026-01-01T00:00:00",
    "0001-01-01T00:00:00-12:00",
    "9999-12-31T23:59:59+00:01",
    "\u00e9\u00df",
    "1" * 5000,
]
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    kind = draw.draw(
        st.sampled_from(["truncate", "flip", "delete", "replace", "mixed"])
    )
    if kind in ("truncate", "mixed"):
        data = data[: draw.draw(st.integers(0, len(data)))]
    if kind in ("flip", "mixed"):
        buffer = bytearray(data)
        for _ in range(draw.draw(st.integers(1, 8))):
            if buffer:
                i = draw.draw(st.integers(0, len(buffer) - 1))
                buffer[i] = draw.draw(st.integers(0, 255))
        data = bytes(buffer)
    if kind in ("delete", "replace"):
        root = etree.fromstring(data)
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        for _ in range(draw.draw(st.integers(1, 4))):
            element = elements[draw.draw(st.integers(0, len(elements) - 1))]
            parent = element.getparent()
            if kind == "delete" and parent is not None:
                parent.remove(element)
            else:
                element.text = draw.draw(st.sampled_from(REPLACEMENTS))
        data = etree.tostring(root)
    return data


def _check(read: object, path: Path) -> None:
    try:
        result = read(path)  # type: ignore[operator]
    except MetadataError as exc:
        error = exc
    else:
        assert isinstance(result, Exposure | Session)
        return
    assert error.path == path
    assert error.field


@pytest.fixture(scope="module")
def originals(shared_data: Path) -> dict[str, bytes]:
    return {name: (shared_data / EPU / name).read_bytes() for name in [*XMLS, SESSION]}


@FUZZ
@given(draw=st.data())
def test_mutated_exposure_xml(
    originals: dict[str, bytes], tmp_path: Path, draw: st.DataObject
) -> None:
    name = draw.draw(st.sampled_from(XMLS))
    path = tmp_path / Path(name).name
    path.write_bytes(_mutate(originals[name], draw))
    _check(read_epu_exposure, path)


@settings(FUZZ, max_examples=100)
@given(draw=st.data())
def test_mutated_session_file(
    originals: dict[str, bytes], tmp_path: Path, draw: st.DataObject
) -> None:
    path = tmp_path / "EpuSession.dm"
    path.write_bytes(_mutate(originals[SESSION], draw))
    _check(read_epu_session_file, path)


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=2000))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "FoilHole_1_Data_2_3_20200101_000000.xml"
    path.write_bytes(data)
    _check(read_epu_exposure, path)
    dm = tmp_path / "EpuSession.dm"
    dm.write_bytes(data)
    _check(read_epu_session_file, dm)
