"""Files of a reconstruction: maps (MRC), FSC curves (STAR + PNG), central slices.

Maps are float32 MRC volumes (mode 2, ``ispg`` 1) written atomically, with the voxel
size in the header and origin 0 (as RELION writes them), so ChimeraX and RELION
place them alike.  The FSC STAR has RELION's ``data_fsc`` labels; shell 0 has
``rlnAngstromResolution`` 999 (RELION's stand-in for infinity).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipelines.io.outputs import write_bytes_atomic, write_mrc, write_star
from pipelines.reconstruct.fsc import GOLD_STANDARD_THRESHOLD, FscCurve

__all__ = [
    "fsc_table",
    "write_central_slices_png",
    "write_fsc_png",
    "write_fsc_star",
    "write_map",
]

_INFINITE_RESOLUTION_A = 999.0
_PLOT_PX = (480, 320)
_MARGIN_PX = 36


def write_map(path: str | Path, volume: np.ndarray, *, pixel_size_a: float) -> Path:
    """A float32 MRC volume with its voxel size, atomically."""
    return write_mrc(
        path,
        np.asarray(volume),
        pixel_size_a=pixel_size_a,
        float16=False,
        is_stack=False,
    )


def fsc_table(curve: FscCurve) -> pd.DataFrame:
    """RELION's ``data_fsc`` loop for ``curve``."""
    resolution = curve.resolution_a.copy()
    resolution[~np.isfinite(resolution)] = _INFINITE_RESOLUTION_A
    return pd.DataFrame(
        {
            "rlnSpectralIndex": curve.spectral_index.astype(np.int64),
            "rlnResolution": curve.resolution_per_a,
            "rlnAngstromResolution": resolution,
            "rlnFourierShellCorrelation": curve.fsc,
        }
    )


def write_fsc_star(path: str | Path, curve: FscCurve) -> Path:
    return write_star(path, {"fsc": fsc_table(curve)})


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_fsc_png(
    path: str | Path,
    curves: dict[str, FscCurve],
    *,
    threshold: float = GOLD_STANDARD_THRESHOLD,
) -> Path:
    """FSC against spatial frequency (1/Å), one coloured line per curve, with the
    threshold as a grey line and the first curve's crossing in the title."""
    width, height = _PLOT_PX
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top = _MARGIN_PX, _MARGIN_PX // 2
    right, bottom = width - _MARGIN_PX // 2, height - _MARGIN_PX
    first = next(iter(curves.values()))
    f_max = float(first.resolution_per_a[-1])

    def xy(frequency: float, value: float) -> tuple[float, float]:
        x = left + (right - left) * frequency / f_max
        y = bottom - (bottom - top) * (np.clip(value, -0.1, 1.05) + 0.1) / 1.15
        return x, y

    draw.rectangle((left, top, right, bottom), outline="black")
    for level, colour in ((0.0, "black"), (threshold, "grey"), (0.5, "lightgrey")):
        draw.line((xy(0, level), xy(f_max, level)), fill=colour)
    colours = ["blue", "red", "green", "orange", "purple"]
    for (name, curve), colour in zip(curves.items(), colours * 4, strict=False):
        points = [
            xy(float(f), float(v))
            for f, v in zip(curve.resolution_per_a, curve.fsc, strict=True)
        ]
        draw.line(points, fill=colour, width=2)
        draw.text(
            (left + 6, top + 4 + 12 * list(curves).index(name)), name, fill=colour
        )
    draw.text(
        (left, bottom + 6),
        f"0 .. {f_max:.3f} 1/A    FSC {threshold} at "
        f"{first.crossing_a(threshold):.2f} A",
        fill="black",
    )
    return write_bytes_atomic(path, _png_bytes(image))


def _strip(sections: list[np.ndarray]) -> np.ndarray:
    """Sections side by side, 2-pixel gaps, scaled to 0..1 over their 0.5-99.5 %."""
    low, high = np.percentile(
        np.concatenate([s.ravel() for s in sections]), [0.5, 99.5]
    )
    gap = np.full((sections[0].shape[0], 2), low)
    parts = [sections[0]]
    for section in sections[1:]:
        parts += [gap, section]
    strip = np.concatenate(parts, axis=1)
    scaled: np.ndarray = np.clip((strip - low) / max(high - low, 1e-12), 0.0, 1.0)
    return scaled


def write_central_slices_png(
    path: str | Path, volume: np.ndarray, *, projections: bool = False
) -> Path:
    """The central z, y and x sections of ``volume`` side by side (one grey scale);
    with ``projections``, below them its projections along the same three axes
    (their own grey scale)."""
    vol = np.asarray(volume, dtype=np.float64)
    c = vol.shape[0] // 2
    rows = [_strip([vol[c], vol[:, c, :], vol[:, :, c]])]
    if projections:
        gap = np.ones((2, rows[0].shape[1]))
        rows += [gap, _strip([vol.sum(axis=0), vol.sum(axis=1), vol.sum(axis=2)])]
    image = Image.fromarray((np.concatenate(rows[::-1])[::-1] * 255).astype(np.uint8))
    scale = max(1, 256 // vol.shape[0])
    image = image.resize(
        (image.width * scale, image.height * scale), Image.Resampling.NEAREST
    )
    return write_bytes_atomic(path, _png_bytes(image))
