"""RELION's iteration files in a job folder: ``<root>_itNNN_optimiser.star`` marks
a finished iteration (the 2D snapshots write it last).

Here, not in :mod:`pipelines.class2d.outputs`, so that the service's job index
can ask for the newest iteration without importing the 2D numerics.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["latest_iteration", "saved_iterations"]


def latest_iteration(folder: str | Path, root: str = "run") -> int | None:
    """The newest iteration with an ``<root>_itNNN_optimiser.star`` in ``folder``
    (``None``: no snapshot yet)."""
    found = saved_iterations(Path(folder), root)
    return max(found) if found else None


def saved_iterations(folder: Path, root: str) -> set[int]:
    """Every iteration with an ``<root>_itNNN_optimiser.star`` in ``folder``."""
    pattern = re.compile(rf"{re.escape(root)}_it(\d+)_optimiser\.star")
    names = (
        pattern.fullmatch(p.name) for p in folder.glob(f"{root}_it*_optimiser.star")
    )
    return {int(m.group(1)) for m in names if m is not None}
