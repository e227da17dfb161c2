"""The guard's rule on counts (the service test in test_template_loop.py runs it
end to end with a real ledger)."""

from __future__ import annotations

import pytest

from livestream.config import TemplatesSection
from livestream.templates.guard import GuardVerdict


@pytest.mark.parametrize(
    ("blob", "templates", "accepted"),
    [
        (4620, 72, False),  # EMPIAR-10017's first set with the decoy threshold
        (2249, 1969, True),  # the same set with the per-micrograph threshold
        (100, 49, False),
        (100, 50, True),  # at the ratio: used
        (0, 0, True),  # nothing to compare: used
    ],
)
def test_a_set_is_used_when_it_picks_at_least_the_ratio_of_blob(
    blob: int, templates: int, accepted: bool
) -> None:
    verdict = GuardVerdict(
        exposures=3,
        blob_picks=blob,
        template_picks=templates,
        min_pick_ratio=TemplatesSection().min_pick_ratio,
    )
    assert verdict.accepted is accepted
    record = verdict.as_json()
    assert record["accepted"] is accepted
    assert (record["blob_picks"], record["template_picks"]) == (blob, templates)
