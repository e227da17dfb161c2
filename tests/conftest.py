"""Fixtures shared by every test package.

Real data comes from ``../shared/data`` (next to the checkout) through the one
fixture :func:`shared_data`: outside CI a missing folder skips the test with the
reason; in CI (``CI=true``) it is a failure, because CI always has it.
``LIVESTREAM_SHARED_DATA`` points somewhere else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests import cupy_standin

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


@pytest.fixture(params=["standin", pytest.param("cupy", marks=pytest.mark.gpu)])
def cupy(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """CuPy for the GPU branches of the ``xp`` seam: the strict CPU stand-in
    (:mod:`tests.cupy_standin`, in CI) and, where a GPU is, the real CuPy."""
    if request.param == "cupy":
        yield pytest.importorskip("cupy")
        return
    module = cupy_standin.install()
    try:
        yield module
    finally:
        cupy_standin.uninstall()


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator; tests never use unseeded randomness."""
    return np.random.default_rng(20261122)
