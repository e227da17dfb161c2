"""Fixtures shared by every test package.

Real data comes from ``../shared/data`` (next to the checkout) through the one
fixture :func:`shared_data`: outside CI a missing folder skips the test with the
reason; in CI (``CI=true``) it is a failure, because CI always has it.
``LIVESTREAM_SHARED_DATA`` points somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("LIVESTREAM_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real files (``real/``, ``sessions/``)."""
    folder = _shared_data_dir()
    if not (folder / "real").is_dir() or not (folder / "sessions").is_dir():
        message = f"real data folder {folder} is missing (set LIVESTREAM_SHARED_DATA)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{message}; CI must have it")
        pytest.skip(message)
    return folder


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator; tests never use unseeded randomness."""
    return np.random.default_rng(20261122)
