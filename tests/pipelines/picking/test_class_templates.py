"""The template classes chosen from a ranked 2D selection, and their averages."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.picking.class_templates import (
    choose_template_classes,
    template_averages,
)


def test_most_populated_selected_classes_once_enough_are_selected() -> None:
    counts = [0, 30, 0, 0, 10, 0, 40, 30]
    rule = {"min_selected_classes": 2, "min_particles": 50, "max_templates": 3}
    chosen = choose_template_classes([2, 5, 7, 8], counts, **rule)
    assert chosen == ((7, 2, 8), 110)  # ties by class number
    assert choose_template_classes([7], counts, **rule) is None  # one class
    assert choose_template_classes([2, 7], counts, n_particles=49, **rule) is None
    with pytest.raises(StageInputError, match="selected_classes"):
        choose_template_classes([9], counts, **rule)


def test_template_averages_keep_the_chosen_rows_in_order() -> None:
    stack = np.arange(4 * 3 * 3, dtype=np.float64).reshape(4, 3, 3)
    out = template_averages(stack, [3, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, stack[[2, 0]])
    with pytest.raises(StageInputError, match="classes"):
        template_averages(stack, [5], "run_it020_classes.mrcs")
