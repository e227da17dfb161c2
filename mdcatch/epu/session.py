"""Read an EPU session: ``EpuSession.dm`` and the per-exposure XMLs beside it.

``EpuSession.dm`` is .NET DataContract XML (``EpuSessionXml``) with ``z:Id`` /
``z:Ref`` object references; a referenced value (the defocus list shared by the
acquisition areas, for one) is followed to the element that holds it.

Example::

    session, exposures = scan_epu_session(
        Path("/data/epu/session"), movie_roots=[Path("/data/DoseFractions/session")]
    )
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.xml_values import (
    ARR,
    Z,
    child_elements,
    element_text,
    is_nil,
    local_name,
    parse_datetime_utc,
    parse_float,
    parse_int,
    read_xml_root,
)
from mdcatch.errors import MetadataError
from mdcatch.matching import exposure_stem, index_movies, is_epu_exposure_xml
from mdcatch.records import Exposure, MovieFormat, Session, Software

__all__ = [
    "ROOT_EXTRA_KEYS",
    "SAMPLE_EXTRA_KEYS",
    "movie_format_from_output",
    "read_epu_session_file",
    "scan_epu_session",
]

PERSISTENCE = "http://schemas.datacontract.org/2004/07/Applications.Epu.Persistence"
GENERIC = "http://schemas.datacontract.org/2004/07/System.Collections.Generic"
# Simple settings kept in ``Session.extra``: of the session, and of its first sample.
ROOT_EXTRA_KEYS = ("ClusteringMode",)
SAMPLE_EXTRA_KEYS = ("AtlasId", "GridType")
_VERSION = re.compile(r"Version=(\d+(?:\.\d+)*)")


def movie_format_from_output(output_format: str) -> MovieFormat | None:
    """The movie container for EPU's ``DoseFractionsOutputFormat`` text.

    ``Tiff Lzw Non-Gain normalized`` and ``TIFF`` give TIFF, ``Mrc`` MRC, ``EER``
    EER; anything else ``None`` (the raw text stays in ``output_format_raw``).
    """
    lowered = output_format.strip().lower()
    if lowered.startswith("tif"):
        return MovieFormat.TIFF
    if lowered.startswith("mrc"):
        return MovieFormat.MRC
    if lowered.startswith("eer"):
        return MovieFormat.EER
    return None


class _Document:
    """An ``EpuSessionXml`` tree with ``z:Ref`` resolution."""

    def __init__(self, root: etree._Element, path: Path) -> None:
        self.root = root
        self.path = path
        self._ids: dict[str, etree._Element] | None = None

    def resolve(self, element: etree._Element | None) -> etree._Element | None:
        if element is None:
            return None
        ref = element.get(f"{{{Z}}}Ref")
        if ref is None:
            return None if is_nil(element) else element
        if self._ids is None:
            self._ids = {}
            for e in self.root.iter():
                object_id = e.get(f"{{{Z}}}Id")
                if object_id is not None and isinstance(e.tag, str):
                    self._ids.setdefault(object_id, e)
        target = self._ids.get(ref)
        if target is None:
            raise MetadataError(self.path, local_name(element), ref, "z:Ref to no z:Id")
        return target

    def text(self, parent: etree._Element | None, name: str) -> str | None:
        if parent is None:
            return None
        return element_text(self.resolve(parent.find(f"{{{PERSISTENCE}}}{name}")))

    def samples(self) -> list[etree._Element]:
        items = self.root.find(f"{{{PERSISTENCE}}}Samples/{{{PERSISTENCE}}}_items")
        if items is None:
            return []
        found = (self.resolve(s) for s in items.iterfind(f"{{{PERSISTENCE}}}SampleXml"))
        return [s for s in found if s is not None]


def _grid_square_ids(doc: _Document, sample: etree._Element) -> list[str]:
    pairs = sample.find(f"{{{PERSISTENCE}}}GridSquares/{{{ARR}}}m_serializationArray")
    ids = []
    for pair in [] if pairs is None else child_elements(pairs):
        key = parse_int(
            element_text(pair.find(f"{{{GENERIC}}}key")), doc.path, "GridSquares.key"
        )
        ids.append(str(key))
    return ids


def _defocus_list_um(doc: _Document, sample: etree._Element) -> list[float]:
    areas = sample.find(
        f"{{{PERSISTENCE}}}TargetAreaTemplate/{{{PERSISTENCE}}}DataAcquisitionAreas"
        f"/{{{ARR}}}m_serializationArray"
    )
    values: list[float] = []
    for pair in [] if areas is None else child_elements(areas):
        value = doc.resolve(pair.find(f"{{{GENERIC}}}value"))
        setting = (
            None
            if value is None
            else value.find(f"{{{PERSISTENCE}}}ImageAcquisitionSettingXml")
        )
        defocus = (
            None
            if setting is None
            else doc.resolve(setting.find(f"{{{PERSISTENCE}}}Defocus"))
        )
        for item in [] if defocus is None else defocus.iterfind(f"{{{ARR}}}double"):
            um = -parse_float(element_text(item), doc.path, "Defocus", scale_exp=6)
            if um not in values:
                values.append(um)
    return values


def read_epu_session_file(dm_path: Path) -> Session:
    """Read ``EpuSession.dm`` into a :class:`~mdcatch.records.Session`.

    The defocus list is in µm, positive for underfocus; ``storage_folder_raw`` is
    the Windows path EPU wrote movies to (map it to a local folder yourself).
    """
    path = Path(dm_path)
    root = read_xml_root(path, root_tag=f"{{{PERSISTENCE}}}EpuSessionXml")
    doc = _Document(root, path)
    name = doc.text(root, "Name")
    if name is None:
        raise MetadataError(path, "Name", None, "missing")
    start_text = doc.text(root, "StartDateTime")
    start: datetime | None = None
    if start_text is not None:
        start = parse_datetime_utc(start_text, path, "StartDateTime")
    storage = ""
    folders = root.find(f"{{{PERSISTENCE}}}StorageFolders/{{{PERSISTENCE}}}_items")
    for folder in [] if folders is None else folders:
        resolved = doc.resolve(folder) if isinstance(folder.tag, str) else None
        storage = doc.text(resolved, "Path") or ""
        if storage:
            break
    output_format = doc.text(root, "DoseFractionsOutputFormat") or ""
    grid_squares: list[str] = []
    defocus: list[float] = []
    extra: dict[str, str] = {}
    for sample in doc.samples():
        grid_squares += _grid_square_ids(doc, sample)
        defocus += [d for d in _defocus_list_um(doc, sample) if d not in defocus]
        for key in SAMPLE_EXTRA_KEYS:
            value = doc.text(sample, key)
            if value is not None:
                extra.setdefault(key, value)
    for key in ROOT_EXTRA_KEYS:
        value = doc.text(root, key)
        if value is not None:
            extra.setdefault(key, value)
    version = _VERSION.search(root.get(f"{{{Z}}}Assembly") or "")
    return Session(
        name=name,
        software=Software.EPU,
        session_path=path.parent,
        start_utc=start,
        storage_folder_raw=storage,
        movie_format=movie_format_from_output(output_format),
        output_format_raw=output_format,
        image_file_format=doc.text(root, "ImageFileFormat") or "",
        defocus_list_um=tuple(defocus),
        grid_square_ids=tuple(grid_squares),
        software_version="" if version is None else version.group(1),
        extra=MappingProxyType(extra),
    )


def scan_epu_session(
    folder: Path,
    *,
    movie_roots: Sequence[Path] = (),
    errors: list[MetadataError] | None = None,
) -> tuple[Session, list[Exposure]]:
    """Read an EPU session folder: ``EpuSession.dm`` (optional) and every
    ``Images-Disc*/GridSquare_*/Data/FoilHole_*_Data_*.xml``, paired with movies.

    Movies are looked for under ``folder`` and each of ``movie_roots`` (a separate
    ``DoseFractions`` tree); an exposure without one yet has ``movie_path=None``.
    A bad XML (or ``EpuSession.dm``) raises :class:`MetadataError`, unless
    ``errors`` is a list: then the error is appended to it and the file skipped (a
    bad ``EpuSession.dm`` leaves a Session named after the folder).
    """
    folder = Path(folder)
    dm_path = folder / "EpuSession.dm"
    session = Session(name=folder.name, software=Software.EPU, session_path=folder)
    if dm_path.is_file():
        try:
            session = read_epu_session_file(dm_path)
        except MetadataError as exc:
            if errors is None:
                raise
            errors.append(exc)
    xml_paths = sorted(
        p
        for p in folder.glob("Images-Disc*/GridSquare_*/Data/*.xml")
        if is_epu_exposure_xml(p)
    )
    roots = [folder, *(Path(r) for r in movie_roots)]
    movies = index_movies(roots)
    exposures = []
    for xml_path in xml_paths:
        stem = exposure_stem(xml_path)
        try:
            exposure = read_epu_exposure(
                xml_path, movie_path=None if stem is None else movies.get(stem)
            )
        except MetadataError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        exposures.append(exposure)
    movie_folder = next(
        (
            root
            for root in roots
            if any(
                e.movie_path is not None and e.movie_path.is_relative_to(root)
                for e in exposures
            )
        ),
        None,
    )
    return dataclasses.replace(session, movie_folder=movie_folder), exposures
