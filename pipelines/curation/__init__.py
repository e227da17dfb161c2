"""Curation: per-exposure accept/reject rules on motion, CTF and ice figures."""

from pipelines.curation.rules import (
    CurationDecision,
    CurationThresholds,
    ExposureFigures,
    curate,
    curate_table,
)

__all__ = [
    "CurationDecision",
    "CurationThresholds",
    "ExposureFigures",
    "curate",
    "curate_table",
]
