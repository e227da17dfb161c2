"""CTF estimation on the real Falcon micrograph of ``../shared/data/real``.

300 kV, 0.6666 Å/px, EPU nominal defocus 1.8 µm (nominal values are often off by
several thousand Å; the fit found about 2.7 µm, as does the 1D score landscape).
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

from pipelines.ctf.estimate import estimate_ctf


def test_real_falcon_micrograph_gives_a_plausible_trusted_fit(
    shared_data: Path,
) -> None:
    path = shared_data / "real" / "epu2.9_example_crop2048.mrc"
    image = mrcfile.read(path).astype(np.float32)
    fit = estimate_ctf(
        image, pixel_size_a=0.6666, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1
    )
    print(
        f"real micrograph: U {fit.defocus_u_a:.0f} Å, V {fit.defocus_v_a:.0f} Å, "
        f"angle {fit.astigmatism_angle_deg:.1f}°, figure of merit "
        f"{fit.figure_of_merit:.3f}, fit resolution {fit.fit_resolution_a:.2f} Å"
    )
    assert 5000.0 <= fit.defocus_v_a <= fit.defocus_u_a <= 40000.0
    assert fit.trusted, fit.reasons
    assert fit.fit_resolution_a < 10.0
    assert fit.figure_of_merit > 0.1
    # A different tile size sees the same rings: the defocus agrees within 1 %.
    other = estimate_ctf(
        image, pixel_size_a=0.6666, voltage_kv=300.0, cs_mm=2.7, tile_px=1024
    )
    mean = 0.5 * (fit.defocus_u_a + fit.defocus_v_a)
    other_mean = 0.5 * (other.defocus_u_a + other.defocus_v_a)
    assert abs(other_mean - mean) < 0.01 * mean
