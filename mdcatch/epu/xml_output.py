"""Building blocks for writing EPU's .NET DataContract XML.

Numbers are written with exact decimal scaling (Å to m, e/Å² to e/m², µm to m) so
the readers in :mod:`mdcatch.epu.xml_values` get the same floats back; times are written in
UTC with .NET's seven fractional digits; files are written to a hidden temporary
name in the same folder, fsynced and renamed.
"""

from __future__ import annotations

import decimal
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from mdcatch.epu.xml_values import XSI

__all__ = ["dotnet_time", "nil", "scaled", "sub", "write_xml_atomically"]


def scaled(value: float, exponent: int) -> str:
    """``value * 10**exponent`` as exact decimal text (``2.2`` µm -> ``2.2E-6`` m)."""
    return str(decimal.Decimal(repr(value)).scaleb(exponent))


def dotnet_time(value: datetime) -> str:
    """ISO 8601 in UTC with .NET's seven fractional digits."""
    if value.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"


def sub(
    parent: etree._Element, ns: str, name: str, text: str | None = None
) -> etree._Element:
    """Append ``{ns}name`` (with ``text``) to ``parent`` and return it."""
    element = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        element.text = text
    return element


def nil(parent: etree._Element, ns: str, name: str) -> etree._Element:
    """Append an ``i:nil="true"`` element, as .NET writes a null."""
    element = sub(parent, ns, name)
    element.set(f"{{{XSI}}}nil", "true")
    return element


def write_xml_atomically(
    tree: etree._Element, path: Path, *, declaration: bool
) -> Path:
    """Write ``tree`` to a hidden temporary file beside ``path``, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    data = etree.tostring(tree, xml_declaration=declaration, encoding="utf-8")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path
