"""The shared real float MRC of the picking tests: the Falcon micrograph
``real/epu2.9_example_crop2048.mrc`` (0.6666 Å/px), the 255 particles we labelled on
it by eye (``benchmarks/data/epu29_crop2048_labels.csv``; how they were made and
checked: ``benchmarks/data/PROVENANCE.md``) and our CTF estimate of it."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

from pipelines.ctf.model import CtfParams

MICROGRAPH = "real/epu2.9_example_crop2048.mrc"  # under the shared data folder
LABELS = (
    Path(__file__).resolve().parents[3]
    / "benchmarks"
    / "data"
    / "epu29_crop2048_labels.csv"
)
PIXEL_A = 0.6666
DIAMETERS_A = (30.0, 50.0)  # the particle is about 40 Å (60 px; PROVENANCE.md)
TOLERANCE_PX = 15.0  # a quarter of the diameter, as in bench_pick_real.py
# pipelines/ctf's estimate: 2.71 / 2.70 µm, angle -40°; Cs 2.7 mm assumed
CTF = CtfParams(
    defocus_u_a=27122.0,
    defocus_v_a=27028.0,
    astigmatism_angle_deg=-40.0,
    voltage_kv=300.0,
    cs_mm=2.7,
    amplitude_contrast=0.1,
)


def load_real_mrc(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The micrograph (float32, 2048²) and the labels (x = column, y = row)."""
    with mrcfile.open(shared_data / MICROGRAPH) as mrc:
        image = np.asarray(mrc.data, dtype=np.float32)
    labels = np.loadtxt(LABELS, delimiter=",", comments="#")
    assert image.shape == (2048, 2048)
    assert labels.shape == (255, 2)
    return image, labels
