"""The real, hand-labelled micrograph of the picking tests (``tests/data/cryosegnet_10017``,
its PROVENANCE.md): the top half of one EMPIAR-10017 micrograph at 1.77 Å/px and
the 315 labels whose centres lie in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FOLDER = Path(__file__).resolve().parents[2] / "data" / "cryosegnet_10017"
STEM = "Falcon_2012_06_12-14_33_35_0_top"  # its top half (PROVENANCE.md)


@dataclass(frozen=True)
class LabelledMicrograph:
    image: np.ndarray  # float32, rows x columns
    x_px: np.ndarray  # label centres, x = column
    y_px: np.ndarray
    pixel_size_a: float


@pytest.fixture(scope="session")
def labelled_micrograph() -> LabelledMicrograph:
    image = np.asarray(Image.open(FOLDER / f"{STEM}.jpg"), dtype=np.float32)
    labels = np.loadtxt(FOLDER / f"{STEM}.csv", delimiter=",", skiprows=1)
    assert image.shape == (2048, 4096)
    assert labels.shape == (315, 3)
    return LabelledMicrograph(image, labels[:, 0], labels[:, 1], 1.77)
