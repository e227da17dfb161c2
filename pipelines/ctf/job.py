"""The CTF stage on files: one micrograph in, its diagnostic image, PNG and JSON
record out (the ``CtfFind/jobNNN/`` files of a RELION project).

Example::

    outputs = run_ctf(path, out_dir, pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7)
    print(outputs.fit.defocus_u_a, outputs.png_path)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.ctf.estimate import CtfFit, estimate_ctf
from pipelines.ctf.model import DEFAULT_AMPLITUDE_CONTRAST
from pipelines.ctf.outputs import write_ctf_record, write_diagnostic
from pipelines.io.micrographs import read_micrograph

__all__ = ["CtfOutputs", "run_ctf"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CtfOutputs:
    """What :func:`run_ctf` wrote for one micrograph, and the fit."""

    micrograph_path: Path
    fit: CtfFit
    ctf_image_path: Path  # diagnostic MRC, RELION's rlnCtfImage (add ":mrc")
    png_path: Path  # the same diagnostic as PNG, for the dashboard
    record_path: Path  # JSON with the scalar results


def run_ctf(
    micrograph_path: Path,
    out_dir: Path,
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST,
    **options: Any,
) -> CtfOutputs:
    """Estimate the CTF of one MRC micrograph and write its files into ``out_dir``.

    Writes ``<stem>.ctf`` (diagnostic MRC), ``<stem>_ctf.png`` and
    ``<stem>_ctf.json``; ``options`` go to :func:`estimate_ctf`.
    """
    micrograph_path = Path(micrograph_path)
    out_dir = Path(out_dir)
    image, _ = read_micrograph(micrograph_path)
    fit = estimate_ctf(
        image,
        pixel_size_a=pixel_size_a,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        **options,
    )
    stem = micrograph_path.stem
    ctf_image, png = write_diagnostic(
        fit, out_dir / f"{stem}.ctf", out_dir / f"{stem}_ctf.png"
    )
    record = write_ctf_record(
        out_dir / f"{stem}_ctf.json",
        fit,
        {"micrograph_path": str(micrograph_path), "ctf_image_path": str(ctf_image)},
    )
    return CtfOutputs(
        micrograph_path=micrograph_path,
        fit=fit,
        ctf_image_path=ctf_image,
        png_path=png,
        record_path=record,
    )
