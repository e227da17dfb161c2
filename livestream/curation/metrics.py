"""Prometheus metrics of curation: counters for events, gauges for the current state.

Counters (events):

- ``livestream_curation_decisions_total{decision="accepted"|"rejected"}``: decisions
  made by the curate stage;
- ``livestream_curation_rejections_total{figure=...}``: failed rules in those
  decisions (an exposure that fails two rules counts in both);
- ``livestream_curation_reevaluations_total``: threshold changes applied to the
  past exposures; ``livestream_curation_decision_changes_total{decision}``:
  exposures whose decision a re-evaluation turned to ``accepted``/``rejected``.

Gauges (the current decision set, as the ledger holds it; re-evaluations move them
both ways):

- ``livestream_curation_exposures{decision="accepted"|"rejected"}``,
- ``livestream_curation_rejected_exposures{figure=...}``: exposures a figure
  currently rejects,
- ``livestream_curation_thresholds_version``: the version of the thresholds in use
  (the ledger's ``curation_thresholds`` table; 0 = as configured at start).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from livestream.ledger.schema import Curation, StageResult, curation_of, rejections_of

__all__ = ["CurationMetrics"]

_DECISIONS = ("accepted", "rejected")


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
        self._reevaluations = Counter(
            "livestream_curation_reevaluations",
            "Threshold changes applied to every past exposure.",
            registry=registry,
        )
        self._changes = Counter(
            "livestream_curation_decision_changes",
            "Exposures whose decision a re-evaluation changed, by the new decision.",
            ["decision"],
            registry=registry,
        )
        self._current = Gauge(
            "livestream_curation_exposures",
            "Exposures currently accepted or rejected by curation.",
            ["decision"],
            registry=registry,
        )
        self._current_reasons = Gauge(
            "livestream_curation_rejected_exposures",
            "Exposures currently rejected, by each figure that fails its rule.",
            ["figure"],
            registry=registry,
        )
        self._version = Gauge(
            "livestream_curation_thresholds_version",
            "Version of the curation thresholds in use (0: as configured at start).",
            registry=registry,
        )
        self._figures: set[str] = set()
        for decision in _DECISIONS:
            self._decisions.labels(decision=decision)
            self._changes.labels(decision=decision)
            self._current.labels(decision=decision)

    def observe(self, result: StageResult) -> None:
        """Count one curation decision; a result without one counts nothing."""
        decision = curation_of(result)
        if decision is Curation.UNDECIDED:
            return
        self._decisions.labels(decision=decision.value).inc()
        for figure in rejections_of(result):
            self._rejections.labels(figure=figure).inc()

    def set_current(
        self, accepted: int, rejected: int, reasons: Mapping[str, int]
    ) -> None:
        """The current decision set (figures that no longer reject drop to 0)."""
        self._current.labels(decision="accepted").set(accepted)
        self._current.labels(decision="rejected").set(rejected)
        for figure in self._figures - set(reasons):
            self._current_reasons.labels(figure=figure).set(0)
        for figure, n in reasons.items():
            self._current_reasons.labels(figure=figure).set(n)
        self._figures |= set(reasons)

    def observe_reevaluation(
        self, version: int, newly_accepted: int, newly_rejected: int
    ) -> None:
        self._reevaluations.inc()
        self._version.set(version)
        self._changes.labels(decision="accepted").inc(newly_accepted)
        self._changes.labels(decision="rejected").inc(newly_rejected)
