"""Safe parsing of the .NET DataContract XML that EPU writes, and typed value readers.

Every reader here turns a bad value into :class:`mdcatch.MetadataError` naming the
file, the field and the value.  Numbers are parsed as :class:`decimal.Decimal` and
scaled by powers of ten exactly (metres to ångström, e/m² to e/Å²), so a value that
the writer formats from a float reads back as the same float.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from lxml import etree

from mdcatch.errors import MetadataError

__all__ = [
    "ARR",
    "DEGREES_PER_RADIAN",
    "DRAWING",
    "OMP",
    "SO",
    "TYPES",
    "XSD",
    "XSI",
    "Z",
    "child_elements",
    "element_text",
    "is_nil",
    "key_values",
    "local_name",
    "parse_bool",
    "parse_datetime_utc",
    "parse_decimal",
    "parse_float",
    "parse_int",
    "read_xml_root",
]

SO = "http://schemas.datacontract.org/2004/07/Fei.SharedObjects"
ARR = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
OMP = "http://schemas.datacontract.org/2004/07/Fei.Applications.Common.Omp.Interface"
TYPES = "http://schemas.datacontract.org/2004/07/Fei.Types"
DRAWING = "http://schemas.datacontract.org/2004/07/System.Drawing"
Z = "http://schemas.microsoft.com/2003/10/Serialization/"

_MAX_BYTES = 64 * 1024 * 1024
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,6})?")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:\d{2})?"
)
# Exact decimal arithmetic; overflow and invalid input give non-finite results that
# the callers reject, instead of raising decimal's own exceptions.
_CONTEXT = decimal.Context(prec=40, Emax=999_999, Emin=-999_999, traps=[])
DEGREES_PER_RADIAN = decimal.Decimal("57.29577951308232087679815481410517033240547")


def _parser() -> etree.XMLParser:
    # No network, no entity expansion, no DTD, no huge trees: EPU never needs them.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def read_xml_root(path: Path, *, root_tag: str) -> etree._Element:
    """Parse ``path`` safely and check that its root element is ``root_tag``.

    ``root_tag`` is a Clark name (``{namespace}local``).  A truncated or malformed
    file (EPU leaves these after a crash), a DOCTYPE, or a wrong root element raise
    :class:`MetadataError`.
    """
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise MetadataError(path, "file", size, "larger than any EPU metadata file")
        data = path.read_bytes()
    except OSError as exc:
        raise MetadataError(path, "file", str(path), f"cannot be read: {exc}") from exc
    if not data.strip():
        raise MetadataError(path, "file", "", "empty file (still being written?)")
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except (etree.LxmlError, ValueError) as exc:
        raise MetadataError(
            path, "xml", type(exc).__name__, f"malformed or truncated XML: {exc}"
        ) from exc
    if tree.docinfo.doctype:
        raise MetadataError(path, "xml", tree.docinfo.doctype, "DOCTYPE not allowed")
    root = tree.getroot()
    if root.tag != root_tag:
        raise MetadataError(path, "root", root.tag, f"expected {root_tag}")
    return root


def local_name(element: etree._Element) -> str:
    """The tag of ``element`` without its namespace."""
    tag = element.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def child_elements(element: etree._Element) -> Iterator[etree._Element]:
    """Child elements only (no comments, processing instructions or entities)."""
    return (c for c in element if isinstance(c.tag, str))


def is_nil(element: etree._Element) -> bool:
    """True when EPU marked the element ``i:nil="true"``."""
    return bool(element.get(f"{{{XSI}}}nil") == "true")


def element_text(element: etree._Element | None) -> str | None:
    """Stripped text of ``element``; ``None`` when absent, nil or empty."""
    if element is None or is_nil(element):
        return None
    text = (element.text or "").strip()
    return text or None


def key_values(
    container: etree._Element | None, path: Path, field: str
) -> dict[str, etree._Element]:
    """The ``KeyValueOfstringanyType`` dictionary under ``container``, by key.

    Returns ``{key: Value element}``.  A key given twice with different values is a
    :class:`MetadataError`; entries without a key or value are errors too.
    """
    result: dict[str, etree._Element] = {}
    if container is None or is_nil(container):
        return result
    for entry in container.iterfind(f"{{{ARR}}}KeyValueOfstringanyType"):
        key = element_text(entry.find(f"{{{ARR}}}Key"))
        value = entry.find(f"{{{ARR}}}Value")
        if key is None or value is None:
            raise MetadataError(path, field, key, "dictionary entry without Key/Value")
        if key in result and etree.tostring(result[key]) != etree.tostring(value):
            raise MetadataError(path, f"{field}.{key}", key, "key given twice")
        result[key] = value
    return result


def parse_decimal(text: str | None, path: Path, field: str) -> decimal.Decimal:
    """A finite decimal number; missing or malformed text is a MetadataError."""
    if text is None:
        raise MetadataError(path, field, None, "missing")
    stripped = text.strip()
    if len(stripped) > 64 or not _NUMBER.fullmatch(stripped):
        raise MetadataError(path, field, text, "not a number")
    value = _CONTEXT.create_decimal(stripped)
    if not value.is_finite():
        raise MetadataError(path, field, text, "not a finite number")
    return value


def parse_float(
    text: str | None,
    path: Path,
    field: str,
    *,
    scale_exp: int = 0,
    factor: decimal.Decimal | None = None,
) -> float:
    """``text`` times ``10**scale_exp`` (and ``factor``) as a finite float.

    The arithmetic is decimal with 40 digits, so scaling by powers of ten is exact
    and a conversion such as radians to degrees rounds only once.
    """
    number = _CONTEXT.scaleb(parse_decimal(text, path, field), scale_exp)
    if factor is not None:
        number = _CONTEXT.multiply(number, factor)
    value = float(number)
    if value != value or value in (float("inf"), float("-inf")):
        raise MetadataError(path, field, text, "out of range")
    return value


def parse_int(text: str | None, path: Path, field: str) -> int:
    """An integer written without a decimal point."""
    if text is None:
        raise MetadataError(path, field, None, "missing")
    if not _INTEGER.fullmatch(text.strip()):
        raise MetadataError(path, field, text, "not an integer")
    return int(text.strip())


def parse_bool(text: str | None, path: Path, field: str) -> bool:
    """``true`` / ``false`` as .NET writes them (case-insensitive)."""
    lowered = None if text is None else text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise MetadataError(path, field, text, "not a boolean (true/false)")


def parse_datetime_utc(text: str | None, path: Path, field: str) -> datetime:
    """An ISO 8601 time with offset (``...+01:00`` or ``...Z``) converted to UTC.

    .NET writes seven fractional digits; the seventh (100 ns) is dropped.  A time
    without an offset is ambiguous and raises :class:`MetadataError`.
    """
    if text is None:
        raise MetadataError(path, field, None, "missing")
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise MetadataError(path, field, text, "not an ISO 8601 date and time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    microsecond = int((match.group(7) or "0")[:6].ljust(6, "0"))
    offset = match.group(8)
    if offset is None:
        raise MetadataError(path, field, text, "no timezone offset")
    try:
        if offset == "Z":
            tz = UTC
        else:
            sign = -1 if offset[0] == "-" else 1
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            tz = timezone(sign * delta)
        local = datetime(year, month, day, hour, minute, second, microsecond, tz)
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise MetadataError(
            path, field, text, f"impossible date or time: {exc}"
        ) from exc
