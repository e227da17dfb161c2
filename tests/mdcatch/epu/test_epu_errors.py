"""Bad EPU input gives a MetadataError naming the file, the field and the value;
never a silent default."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from mdcatch import ImageKind, MetadataError, Software
from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.writer import epu_exposure_relpath, write_epu_exposure_xml
from mdcatch.epu.xml_values import ARR, OMP, SO
from mdcatch.records import Exposure, Optics

NS = {"so": SO, "a": ARR, "b": OMP}


def _good(folder: Path) -> Path:
    acquired = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    path = folder / epu_exposure_relpath("1", "2", "3_4", acquired)
    exposure = Exposure(
        exposure_id=path.stem,
        software=Software.EPU,
        metadata_path=path,
        movie_path=None,
        acquired_utc=acquired,
        optics=Optics(voltage_kv=300.0, pixel_size_a=1.06, detector="EF-CCD"),
        exposure_time_s=1.5,
        total_dose_e_per_a2=50.0,
        n_frames=40,
        target_defocus_um=1.5,
        extra={"CameraName": "EF-CCD"},
    )
    return write_epu_exposure_xml(exposure, path)


def _edit(path: Path, xpath: str, change: Callable[[etree._Element], None]) -> Path:
    tree = etree.parse(str(path))
    (element,) = tree.getroot().xpath(xpath, namespaces=NS)
    change(element)
    tree.write(str(path))
    return path


def _set(text: str) -> Callable[[etree._Element], None]:
    def change(element: etree._Element) -> None:
        element.text = text

    return change


def _remove(element: etree._Element) -> None:
    element.getparent().remove(element)


PIXEL = "//so:pixelSize/so:x/so:numericValue"
DOSE = "//a:KeyValueOfstringanyType[a:Key='Dose']/a:Value"
FRACTIONS = "//b:NumberOffractions"
VOLTAGE = "//so:AccelerationVoltage"
TIME = "//so:acquisitionDateTime"


@pytest.mark.parametrize(
    ("xpath", "change", "field", "value"),
    [
        (PIXEL, _set("0"), "pixelSize", 0.0),
        (PIXEL, _set("-1.06E-10"), "pixelSize", -1.06),
        (PIXEL, _set("abc"), "pixelSize", "abc"),
        (PIXEL, _set("NaN"), "pixelSize", "NaN"),
        (PIXEL, _set("1E+999999"), "pixelSize", "1E+999999"),
        (DOSE, _set("-4E+21"), "Dose", -40.0),
        (DOSE, _set("0"), "Dose", 0.0),
        ("//a:KeyValueOfstringanyType[a:Key='Dose']", _remove, "Dose", None),
        (
            "//a:KeyValueOfstringanyType[a:Key='AppliedDefocus']",
            _remove,
            "AppliedDefocus",
            None,
        ),
        (FRACTIONS, _set("0"), "FractionationSettings.NumberOffractions", 0),
        (FRACTIONS, _set("4.5"), "FractionationSettings.NumberOffractions", "4.5"),
        (VOLTAGE, _set("0"), "AccelerationVoltage", 0.0),
        (VOLTAGE, _set("-300000"), "AccelerationVoltage", -300.0),
        (VOLTAGE, _remove, "AccelerationVoltage", None),
        (
            TIME,
            _set("2026-03-04T05:06:07.89"),
            "acquisitionDateTime",
            "2026-03-04T05:06:07.89",
        ),
        (
            TIME,
            _set("2026-13-04T05:06:07Z"),
            "acquisitionDateTime",
            "2026-13-04T05:06:07Z",
        ),
        ("//so:camera/so:ExposureTime", _set("0"), "ExposureTime", 0.0),
        ("//so:camera/so:Name", _remove, "camera.Name", None),
        ("//so:Binning/*[1]", _set("0"), "Binning", 0),
    ],
)
def test_impossible_or_missing_values(
    tmp_path: Path,
    xpath: str,
    change: Callable[[etree._Element], None],
    field: str,
    value: object,
) -> None:
    path = _edit(_good(tmp_path), xpath, change)
    with pytest.raises(MetadataError) as info:
        read_epu_exposure(path)
    assert info.value.path == path
    assert info.value.field == field
    assert info.value.value == value
    assert path.name in str(info.value)


def test_data_image_without_fractionation_is_an_error(tmp_path: Path) -> None:
    def nil(element: etree._Element) -> None:
        for child in list(element):
            element.remove(child)
        element.attrib.clear()
        element.set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")

    xpath = "//a:KeyValueOfstringanyType[a:Key='FractionationSettings']/a:Value"
    path = _edit(_good(tmp_path), xpath, nil)
    with pytest.raises(MetadataError, match="without fractionation"):
        read_epu_exposure(path)
    # The same content under a FoilHole image name is a (non-exposure) FoilHole image.
    renamed = path.rename(path.with_name("FoilHole_2_20260304_050607.xml"))
    assert read_epu_exposure(renamed).kind is ImageKind.FOIL_HOLE


@pytest.mark.parametrize("cut", [0, 1, 100, -200, -1])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(MetadataError) as info:
        read_epu_exposure(path)
    assert info.value.path == path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="cannot be read"):
        read_epu_exposure(tmp_path / "FoilHole_1_Data_2_3_20200101_000000.xml")


def test_wrong_root_element(tmp_path: Path) -> None:
    path = tmp_path / "FoilHole_1_Data_2_3_20200101_000000.xml"
    path.write_text("<NotAnImage/>")
    with pytest.raises(MetadataError) as info:
        read_epu_exposure(path)
    assert info.value.field == "root"


def test_entities_are_never_expanded(tmp_path: Path) -> None:
    """Billion-laughs and external entities are refused, not expanded or fetched."""
    path = tmp_path / "FoilHole_1_Data_2_3_20200101_000000.xml"
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    path.write_text(
        f'<!DOCTYPE MicroscopeImage [<!ENTITY l0 "lol">{laughs}'
        '<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f'<MicroscopeImage xmlns="{SO}"><name>&l9;&x;</name></MicroscopeImage>'
    )
    with pytest.raises(MetadataError):
        read_epu_exposure(path)


def test_missing_counting_flag_is_a_warning_not_silent(tmp_path: Path) -> None:
    path = _edit(
        _good(tmp_path),
        "//a:KeyValueOfstringanyType[a:Key='ElectronCountingEnabled']",
        _remove,
    )
    exposure = read_epu_exposure(path)
    assert any("ElectronCountingEnabled" in w for w in exposure.warnings)
