"""Prometheus counters of the curation stage's decisions.

``livestream_curation_decisions_total{decision="accepted"|"rejected"}`` and
``livestream_curation_rejections_total{figure=...}`` (one count per failed rule;
an exposure that fails two rules counts in both).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

__all__ = ["CurationMetrics"]

_PREFIX = "rejected_"


class CurationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._decisions = Counter(
            "livestream_curation_decisions",
            "Exposures accepted or rejected by curation.",
            ["decision"],
            registry=registry,
        )
        self._rejections = Counter(
            "livestream_curation_rejections",
            "Failed curation rules, by the figure that failed.",
            ["figure"],
            registry=registry,
        )
        for decision in ("accepted", "rejected"):
            self._decisions.labels(decision=decision)

    def observe(self, figures: Mapping[str, float]) -> None:
        """Count one curation result (figures of the curate stage)."""
        accepted = figures.get("accepted", 1.0) != 0.0
        self._decisions.labels(decision="accepted" if accepted else "rejected").inc()
        for name in figures:
            if name.startswith(_PREFIX):
                self._rejections.labels(figure=name.removeprefix(_PREFIX)).inc()
