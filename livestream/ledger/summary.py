"""What the ledger says about a session at a glance: counts per stage and state,
recent throughput and the newest exposure's age.

Read by the daemon (systemd STATUS, the retained MQTT status, the per-hour gauge)
and by ``livestream status``, so both show the same figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from livestream.ledger.store import Ledger

__all__ = ["LedgerSummary", "summarize_ledger"]

_WINDOW_S = 3600.0  # throughput over the last hour
_MIN_SPAN_S = 60.0  # no huge rate from the first minute's exposures


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerSummary:
    """One look at the ledger (see :func:`summarize_ledger`)."""

    exposures: Mapping[str, Mapping[str, int]]  # stage -> state -> exposures
    n_exposures: int
    n_done: int
    newest_exposure_age_s: float | None  # None: no exposure yet
    exposures_per_hour: float

    def to_json(self) -> dict[str, object]:
        """The ``livestream status --json`` fields, in this order."""
        return {
            "exposures": {stage: dict(c) for stage, c in self.exposures.items()},
            "n_exposures": self.n_exposures,
            "n_done": self.n_done,
            "newest_exposure_age_s": self.newest_exposure_age_s,
            "exposures_per_hour": self.exposures_per_hour,
        }


def summarize_ledger(ledger: Ledger, now_unix_s: float | None = None) -> LedgerSummary:
    """Counts per stage and state, throughput per hour, the newest exposure's age."""
    now = time.time() if now_unix_s is None else now_unix_s
    newest = ledger.newest_discovered_unix_s()
    first_done = ledger.first_done_unix_s()
    per_hour = 0.0
    if first_done is not None:
        window_start = max(now - _WINDOW_S, first_done)
        n_done = len(ledger.done_times_since(window_start))
        span_s = max(now - window_start, _MIN_SPAN_S)
        per_hour = n_done / span_s * 3600.0
    counts = ledger.stage_counts()
    return LedgerSummary(
        exposures=MappingProxyType(
            {stage: MappingProxyType(c) for stage, c in counts.items()}
        ),
        n_exposures=ledger.count_exposures(),
        n_done=ledger.count_done(),
        newest_exposure_age_s=None if newest is None else max(0.0, now - newest),
        exposures_per_hour=per_hour,
    )
