"""The slices PNG of a map: central sections, and with ``projections`` its projections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.reconstruct.outputs import write_central_slices_png


def test_projections_show_what_the_central_sections_miss(tmp_path: Path) -> None:
    """A blob far off every central plane is absent from the three sections and
    present in the three projections (the row below them); the sections alone
    keep the one-row layout."""
    n = 32
    scale = 256 // n
    vol = np.zeros((n, n, n))
    vol[4:8, 4:8, 4:8] = 1.0  # off every central plane (the centre is 16)
    vol[16, 16, 16] = 0.5  # one voxel on them, so the sections are not constant
    with Image.open(write_central_slices_png(tmp_path / "a.png", vol)) as image:
        alone_size = image.size
    path = write_central_slices_png(tmp_path / "b.png", vol, projections=True)
    with Image.open(path) as image:
        both_size = image.size
        pixels = np.asarray(image, dtype=float)[::scale, ::scale]
    assert alone_size == ((3 * n + 4) * scale, n * scale)
    assert both_size == ((3 * n + 4) * scale, (2 * n + 2) * scale)
    sections, projections = pixels[:n], pixels[n + 2 :]
    blob = (slice(n - 8, n - 4), slice(4, 8))  # y up: rows 4..7 are drawn at n-8..n-5
    assert sections[blob].max() == 0.0
    assert projections[blob].min() == 255.0
    # the same corner of the other two panels
    for panel in (1, 2):
        x = panel * (n + 2)
        assert projections[blob[0], x + 4 : x + 8].min() == 255.0
