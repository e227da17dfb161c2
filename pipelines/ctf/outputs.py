"""Files of the CTF stage: diagnostic image (PNG + MRC), JSON record, RELION STAR.

Every file is written atomically (:mod:`pipelines.io.outputs`).  The diagnostic image
is square, ``(tile_px, tile_px)``, centred on zero frequency: the left half is the
background-subtracted amplitude spectrum, the right half the fitted CTF², so the
Thon rings of data and model meet at the vertical centre line (as CTFFIND's).
``micrographs_ctf.star`` has RELION-4's ``data_optics`` and ``data_micrographs``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from pipelines.io.outputs import atomic_path, write_mrc, write_star, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.ctf.estimate import CtfFit

__all__ = [
    "MicrographCtfRow",
    "ctf_record",
    "diagnostic_image",
    "make_optics_table",
    "write_ctf_record",
    "write_diagnostic",
    "write_micrographs_ctf_star",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MicrographCtfRow:
    """One line of ``micrographs_ctf.star``: names as RELION should read them."""

    micrograph_name: str  # rlnMicrographName, e.g. MotionCorr/job002/Movies/a.mrc
    ctf_image: str  # rlnCtfImage, e.g. CtfFind/job003/Movies/a.ctf:mrc
    fit: CtfFit
    optics_group: int = 1


def _unit_range(values: np.ndarray) -> NDArray[np.float64]:
    low, high = np.percentile(values, [1.0, 99.0])
    scaled: NDArray[np.float64] = np.clip(
        (values - low) / max(float(high - low), 1e-12), 0.0, 1.0
    )
    return scaled


def diagnostic_image(fit: CtfFit, *, zoom: float = 1.25) -> np.ndarray:
    """Spectrum (left half) beside the fitted CTF² (right half), float32 in [0, 1].

    Cropped around zero frequency to ``zoom`` times the fit-resolution frequency
    (at most Nyquist), where the rings are; ``(2 r, 2 r)`` with ``r`` that radius.
    """
    t = fit.spectrum.shape[0]
    k_max = zoom / fit.fit_resolution_a
    radius = int(np.clip(np.ceil(k_max * t * fit.pixel_size_a), 16, t // 2))
    window = slice(t // 2 - radius, t // 2 + radius)
    spectrum = fit.spectrum[window, window]
    model = fit.model[window, window]
    composite = np.empty(spectrum.shape, dtype=np.float32)
    from scipy.ndimage import gaussian_filter  # scipy: ~0.5 s, on first use

    smooth = gaussian_filter(spectrum, 1.0)  # display only: tames the speckle
    composite[:, :radius] = _unit_range(smooth)[:, :radius]
    composite[:, radius:] = model[:, radius:]
    return composite


def write_diagnostic(
    fit: CtfFit, mrc_path: str | Path, png_path: str | Path, *, png_px: int = 512
) -> tuple[Path, Path]:
    """Write :func:`diagnostic_image` as float32 MRC and as ``png_px`` grey PNG."""
    from PIL import Image

    image = diagnostic_image(fit)
    write_mrc(mrc_path, image, pixel_size_a=fit.pixel_size_a, float16=False)
    grey = np.rint(255.0 * image[::-1]).astype(np.uint8)  # PNG rows run top-down
    picture = Image.fromarray(grey).resize((png_px, png_px), Image.Resampling.BILINEAR)
    with atomic_path(png_path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(mrc_path), Path(png_path)


def ctf_record(fit: CtfFit) -> dict[str, Any]:
    """The scalar results of ``fit`` as a JSON-ready dict (units in the keys)."""
    params = fit.params
    return {
        "defocus_u_a": fit.defocus_u_a,
        "defocus_v_a": fit.defocus_v_a,
        "astigmatism_angle_deg": fit.astigmatism_angle_deg,
        "astigmatism_a": fit.astigmatism_a,
        "phase_shift_deg": fit.phase_shift_deg,
        "figure_of_merit": fit.figure_of_merit,
        "fit_resolution_a": fit.fit_resolution_a,
        "trusted": fit.trusted,
        "reasons": list(fit.reasons),
        "pixel_size_a": fit.pixel_size_a,
        "voltage_kv": params.voltage_kv,
        "cs_mm": params.cs_mm,
        "amplitude_contrast": params.amplitude_contrast,
        "n_tiles": fit.n_tiles,
        "tile_px": int(fit.spectrum.shape[0]),
    }


def write_ctf_record(
    path: str | Path, fit: CtfFit, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write :func:`ctf_record` (plus ``extra`` keys) as JSON, atomically."""
    record = ctf_record(fit) | dict(extra or {})
    return write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def make_optics_table(
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    original_pixel_size_a: float | None = None,
    group_name: str = "opticsGroup1",
    group: int = 1,
) -> pd.DataFrame:
    """A one-group ``data_optics`` table for micrograph STAR files."""
    import pandas as pd

    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [group_name],
            "rlnOpticsGroup": [group],
            "rlnMicrographOriginalPixelSize": [original_pixel_size_a or pixel_size_a],
            "rlnVoltage": [voltage_kv],
            "rlnSphericalAberration": [cs_mm],
            "rlnAmplitudeContrast": [amplitude_contrast],
            "rlnMicrographPixelSize": [pixel_size_a],
        }
    )


def write_micrographs_ctf_star(
    path: str | Path,
    rows: Sequence[MicrographCtfRow],
    optics: pd.DataFrame | Mapping[str, Sequence[Any]],
) -> Path:
    """Write RELION's ``micrographs_ctf.star`` (``data_optics`` + ``data_micrographs``)."""
    import pandas as pd

    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": [r.micrograph_name for r in rows],
            "rlnOpticsGroup": [r.optics_group for r in rows],
            "rlnCtfImage": [r.ctf_image for r in rows],
            "rlnDefocusU": [r.fit.defocus_u_a for r in rows],
            "rlnDefocusV": [r.fit.defocus_v_a for r in rows],
            "rlnCtfAstigmatism": [r.fit.astigmatism_a for r in rows],
            "rlnDefocusAngle": [r.fit.astigmatism_angle_deg for r in rows],
            "rlnCtfFigureOfMerit": [r.fit.figure_of_merit for r in rows],
            "rlnCtfMaxResolution": [r.fit.fit_resolution_a for r in rows],
            "rlnPhaseShift": [r.fit.phase_shift_deg for r in rows],
        }
    )
    optics_table = pd.DataFrame(optics)
    return write_star(path, {"optics": optics_table, "micrographs": micrographs})
