"""JSON event payloads published over MQTT: one versioned schema per kind.

Every payload is a flat JSON object that carries ``"schema": "livestream.<kind>/<n>"``,
``"session"``, a ``"message_id"`` (unique per message; QoS 1 is at-least-once, so a
subscriber drops a message whose id it has seen) and ``"published_utc"``. Times are
ISO 8601 in UTC (``2026-11-22T03:56:34.120000+00:00``); naive datetimes are refused.
The schemas are documented in ``docs/operations.md``; a change that removes or renames
a field bumps the version number.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "EventKind",
    "ServiceState",
    "decode_event",
    "encode_event",
    "exposure_payload",
    "schema_name",
    "stamp_event",
    "status_payload",
]

SCHEMA_VERSION = 1


class EventKind(enum.StrEnum):
    """What a message describes; also the last part of its schema name."""

    STATUS = "status"
    EXPOSURE = "exposure"
    CLASS2D = "class2d"
    CLASS3D = "class3d"
    REFINE3D = "refine3d"


class ServiceState(enum.StrEnum):
    """The ``state`` field of a status message."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"  # clean exit
    OFFLINE = "offline"  # the broker's last will: the connection died


def schema_name(kind: EventKind) -> str:
    """``livestream.<kind>/<version>``, e.g. ``livestream.exposure/1``."""
    return f"livestream.{kind.value}/{SCHEMA_VERSION}"


def _to_json(value: Any, field: str) -> Any:
    """Convert datetimes, paths, enums and nested containers to JSON values."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"event field {field!r}: naive datetime {value!r}; use UTC"
            )
        return value.astimezone(UTC).isoformat()
    if isinstance(value, enum.Enum):
        return _to_json(value.value, field)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN/inf
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, str | int | bool):
        return value
    raise TypeError(f"event field {field!r}: {type(value).__name__} is not JSON")


def stamp_event(
    kind: EventKind,
    session: str,
    payload: Mapping[str, Any],
    *,
    now_utc: datetime | None = None,
) -> dict[str, Any]:
    """Return ``payload`` as JSON values plus schema, session, message id and time.

    Fields already in ``payload`` win over the generated ``message_id`` and
    ``published_utc``; ``schema`` and ``session`` are always set here.
    """
    stamped: dict[str, Any] = {
        "message_id": uuid.uuid4().hex,
        "published_utc": now_utc or datetime.now(UTC),
    }
    stamped.update(payload)
    stamped["schema"] = schema_name(kind)
    stamped["session"] = session
    converted: dict[str, Any] = _to_json(stamped, kind.value)
    return converted


def encode_event(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an already stamped payload."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def decode_event(data: bytes | bytearray | str) -> dict[str, Any]:
    """Parse a message; raise ``ValueError`` naming the problem if it is no event."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"event is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("schema"), str):
        raise ValueError(f"event has no 'schema' field: {str(value)[:120]!r}")
    return value


def status_payload(
    state: ServiceState,
    *,
    summary: str = "",
    exposures: Mapping[str, Mapping[str, int]] | None = None,
    exposures_per_hour: float | None = None,
    newest_exposure_utc: datetime | None = None,
) -> dict[str, Any]:
    """The service's status: state, a one-line summary, counts per stage and state."""
    return {
        "state": state,
        "summary": summary.replace("\n", " "),
        "exposures": {s: dict(c) for s, c in (exposures or {}).items()},
        "exposures_per_hour": exposures_per_hour,
        "newest_exposure_utc": newest_exposure_utc,
    }


def exposure_payload(
    exposure_id: str,
    *,
    acquired_utc: datetime | None,
    processed_utc: datetime,
    movie_path: PurePath | str | None = None,
    motion: Mapping[str, Any] | None = None,
    ctf: Mapping[str, Any] | None = None,
    particle_count: int | None = None,
    thumbnail_path: PurePath | str | None = None,
    stages: Mapping[str, str] | None = None,
    curation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One processed exposure; ``motion``/``ctf`` hold the stage summaries in Å.

    ``motion`` typically ``{"total_motion_a": ..., "early_motion_a": ...}``, ``ctf``
    ``{"defocus_u_a", "defocus_v_a", "astigmatism_angle_deg", "fit_resolution_a"}``;
    ``stages`` maps each stage to its final state (done, failed, quarantined);
    ``curation`` is ``{"accepted": bool, "reasons": [figure, ...], "rejected":
    {figure: value}}`` (``None`` without a curation stage).  An exposure that a
    threshold change accepts later is processed further and published again.
    """
    return {
        "exposure_id": exposure_id,
        "acquired_utc": acquired_utc,
        "processed_utc": processed_utc,
        "movie_path": movie_path,
        "motion": dict(motion) if motion is not None else None,
        "ctf": dict(ctf) if ctf is not None else None,
        "particle_count": particle_count,
        "thumbnail_path": thumbnail_path,
        "stages": dict(stages or {}),
        "curation": dict(curation) if curation is not None else None,
    }
