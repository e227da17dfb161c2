"""What an mdoc's global header and titles say about every section below them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from types import MappingProxyType

from mdcatch.errors import MetadataError
from mdcatch.serialem.autodoc import MdocDocument, parse_datetime, parse_float

__all__ = ["MdocContext", "read_context", "strip_movie_suffix"]

MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer", ".st")
_TITLE_TIME = re.compile(r"(\d{1,2}-[A-Za-z]{3}-\d{2,4}\s+\d{1,2}:\d{2}:\d{2})\s*$")
_CAMERAS = re.compile(r"Camera\s*->\s*(.*)$")
_CAMERA_ENTRY = re.compile(r"^(\d+):(.+)$")
_D_NUMBER = re.compile(r"\b(D\d{3,5})\b")
_VERSION = re.compile(r"Version\s+(\d+(?:\.\d+)+)")
_CONSUMED = frozenset({"Voltage", "PixelSpacing", "Version", "Montage"})


@dataclass(frozen=True, slots=True)
class MdocContext:
    """Header values that sections inherit, plus what the titles tell."""

    voltage_kv: float | None
    pixel_size_a: float | None
    montage: bool
    software_version: str
    cameras: Mapping[int, str]
    instrument_id: str
    title_utc: datetime | None
    image_stem: str
    extra: Mapping[str, str]


def strip_movie_suffix(name: str) -> str:
    """``a.tif.mdoc`` -> ``a``; ``TS_01.mrc`` -> ``TS_01``; ``a.b`` stays ``a.b``."""
    if name.lower().endswith(".mdoc"):
        name = name[: -len(".mdoc")]
    for suffix in MOVIE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_context(doc: MdocDocument, timezone: tzinfo) -> MdocContext:
    """Interpret the global header and the titles of ``doc``."""
    header, path = doc.header, doc.path
    voltage = _positive(path, header, "Voltage")
    pixel = _positive(path, header, "PixelSpacing")
    montage = header.get("Montage", "0").strip() not in {"", "0"}
    version_raw = header.get("Version", "").strip()
    version_match = _VERSION.search(version_raw)
    version = version_match.group(1) if version_match else version_raw
    cameras: dict[int, str] = {}
    instrument_id = ""
    title_utc: datetime | None = None
    for title in doc.titles:
        body = title
        time_match = _TITLE_TIME.search(title)
        if time_match:
            body = title[: time_match.start()]
            if title_utc is None:
                title_utc = parse_datetime(path, "T", time_match.group(1), timezone)
        cameras.update(_read_cameras(body))
        d_number = _D_NUMBER.search(body)
        if d_number and not instrument_id:
            instrument_id = d_number.group(1)
    image_file = header.get("ImageFile", "").strip()
    image_stem = strip_movie_suffix(image_file or path.name)
    extra = {key: value for key, value in header.items() if key not in _CONSUMED}
    extra.update({f"title.{n}": title for n, title in enumerate(doc.titles, 1)})
    return MdocContext(
        voltage_kv=voltage,
        pixel_size_a=pixel,
        montage=montage,
        software_version=version,
        cameras=MappingProxyType(cameras),
        instrument_id=instrument_id,
        title_utc=title_utc,
        image_stem=image_stem,
        extra=MappingProxyType(extra),
    )


def _read_cameras(body: str) -> dict[int, str]:
    """``Camera -> 0:Ceta 1:GIF-K3`` -> ``{0: "Ceta", 1: "GIF-K3"}``."""
    match = _CAMERAS.search(body)
    if not match:
        return {}
    cameras: dict[int, str] = {}
    for entry in re.split(r"\s+(?=\d+:)", match.group(1).strip()):
        item = _CAMERA_ENTRY.match(entry.strip())
        if item and item.group(2).strip():
            cameras[int(item.group(1))] = item.group(2).strip()
    return cameras


def _positive(path: Path, values: Mapping[str, str], key: str) -> float | None:
    raw = values.get(key)
    if raw is None:
        return None
    value = parse_float(path, key, raw)
    if value <= 0:
        raise MetadataError(path, key, raw, "must be positive")
    return value
