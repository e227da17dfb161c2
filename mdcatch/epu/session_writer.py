"""Write ``EpuSession.dm`` (``EpuSessionXml``) from a Session record, in the shape
:func:`mdcatch.epu.session.read_epu_session_file` reads."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from mdcatch.epu.session import (
    GENERIC,
    PERSISTENCE,
    ROOT_EXTRA_KEYS,
    SAMPLE_EXTRA_KEYS,
    movie_format_from_output,
)
from mdcatch.epu.xml_output import dotnet_time, nil, scaled, sub, write_xml_atomically
from mdcatch.epu.xml_values import ARR, XSI, Z
from mdcatch.records import MovieFormat, Session

__all__ = ["write_epu_session_file"]

_COMMON = "http://schemas.datacontract.org/2004/07/Fei.Applications.Common.Types"
_FORMAT_NAMES = {
    MovieFormat.TIFF: "Tiff Lzw",
    MovieFormat.MRC: "Mrc",
    MovieFormat.EER: "Eer",
}


def write_epu_session_file(session: Session, path: Path) -> Path:
    """Write ``session`` as ``EpuSession.dm`` (``EpuSessionXml``) and return ``path``.

    ``Session.extra`` may hold only the keys the reader fills (``AtlasId``,
    ``GridType``, ``ClusteringMode``); others raise ``ValueError``.
    """
    unknown = set(session.extra) - set(ROOT_EXTRA_KEYS) - set(SAMPLE_EXTRA_KEYS)
    if unknown:
        raise ValueError(f"EpuSession.dm has no place for extra keys {sorted(unknown)}")
    output_format = _output_format(session)
    path = Path(path)
    p = PERSISTENCE
    root = etree.Element(f"{{{p}}}EpuSessionXml", nsmap={None: p, "i": XSI, "z": Z})
    root.set(f"{{{Z}}}Id", "1")
    if session.software_version:
        root.set(
            f"{{{Z}}}Assembly",
            f"Applications.Epu.Persistence, Version={session.software_version}, "
            "Culture=neutral, PublicKeyToken=null",
        )
    for key in ROOT_EXTRA_KEYS:
        if key in session.extra:
            sub(root, p, key, session.extra[key])
    if output_format:
        sub(root, p, "DoseFractionsOutputFormat", output_format)
    if session.image_file_format:
        sub(root, p, "ImageFileFormat", session.image_file_format)
    sub(root, p, "Name", session.name)
    items = sub(sub(root, p, "Samples"), p, "_items")
    _write_sample(sub(items, p, "SampleXml"), session)
    nil(items, p, "SampleXml")
    if session.start_utc is not None:
        sub(root, p, "StartDateTime", dotnet_time(session.start_utc))
    if session.storage_folder_raw:
        folders = sub(sub(root, p, "StorageFolders"), p, "_items")
        sub(sub(folders, p, "StorageFolderXml"), p, "Path", session.storage_folder_raw)
    return write_xml_atomically(root, path, declaration=True)


def _output_format(session: Session) -> str:
    """``DoseFractionsOutputFormat``: as read, else from the movie format."""
    output_format = session.output_format_raw
    if not output_format and session.movie_format is not None:
        output_format = _FORMAT_NAMES[session.movie_format]
    if (
        output_format
        and movie_format_from_output(output_format) != session.movie_format
    ):
        raise ValueError(
            f"output format {output_format!r} is not {session.movie_format}"
        )
    return output_format


def _write_sample(sample: etree._Element, session: Session) -> None:
    """The ``SampleXml``: extra keys, grid squares, the defocus list."""
    p = PERSISTENCE

    for key in SAMPLE_EXTRA_KEYS:
        if key in session.extra:
            sub(sample, p, key, session.extra[key])
    squares = etree.SubElement(
        sub(sample, p, "GridSquares"),
        f"{{{ARR}}}m_serializationArray",
        nsmap={"a": ARR, "b": GENERIC},
    )
    for square_id in session.grid_square_ids:
        pair = sub(
            squares, GENERIC, "KeyValuePairOfintSerializedReferenceOfGridSquareXml"
        )
        sub(pair, GENERIC, "key", square_id)
        value = etree.SubElement(pair, f"{{{GENERIC}}}value", nsmap={"c": _COMMON})
        sub(value, _COMMON, "FileName", f"Metadata\\GridSquare_{square_id}.dm")
    areas = sub(
        sub(sub(sample, p, "TargetAreaTemplate"), p, "DataAcquisitionAreas"),
        ARR,
        "m_serializationArray",
    )
    if session.defocus_list_um:
        area = sub(
            sub(areas, GENERIC, "KeyValuePairOfintDataAcquisitionAreaXml"),
            GENERIC,
            "value",
        )
        defocus = sub(sub(area, p, "ImageAcquisitionSettingXml"), p, "Defocus")
        for value_um in session.defocus_list_um:
            sub(defocus, ARR, "double", scaled(-value_um, -6))
