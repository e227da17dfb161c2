"""What a stage gets: the :class:`StageTask`, pickled to the worker process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from livestream.ledger.schema import StageResult
from livestream.stages.params import StageParams
from mdcatch.records import Exposure

__all__ = ["StageTask", "picklable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageTask:
    """Everything a stage gets; pickled to the worker.

    ``kind`` names the implementation (:mod:`livestream.stages.registry`),
    ``params`` are its checked parameters, ``previous`` the results of the
    earlier stages of the chain, by stage name.
    """

    stage: str
    kind: str
    params: StageParams
    exposure: Exposure
    project_path: Path
    previous: Mapping[str, StageResult] = field(default_factory=dict)
    attempt: int = 1


def picklable(exposure: Exposure) -> Exposure:
    """``exposure`` with plain dicts where mdcatch keeps read-only mapping proxies
    (which cannot be pickled to a worker process)."""
    if isinstance(exposure.extra, dict):
        return exposure
    return replace(exposure, extra=dict(exposure.extra))
