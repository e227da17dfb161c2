"""The CTF options of the commands that take a known CTF (``pick``, ``extract``).

``--defocus-a U V ANGLE`` with ``--voltage-kv``, ``--cs-mm`` and
``--amplitude-contrast``, whose defaults are the one set in
:mod:`pipelines.ctf.model` (Cs from :mod:`mdcatch.crosscheck`).
"""

from __future__ import annotations

import argparse

from mdcatch.crosscheck import DEFAULT_CS_MM
from pipelines.ctf.model import (
    DEFAULT_AMPLITUDE_CONTRAST,
    DEFAULT_VOLTAGE_KV,
    CtfParams,
)

__all__ = ["add_ctf_args", "ctf_from_args", "ctf_of"]


def add_ctf_args(parser: argparse.ArgumentParser, *, defocus_help: str) -> None:
    """Add ``--defocus-a`` and the optics options to ``parser``."""
    parser.add_argument(
        "--defocus-a",
        type=float,
        nargs=3,
        metavar=("U", "V", "ANGLE"),
        help=defocus_help,
    )
    parser.add_argument("--voltage-kv", type=float, default=DEFAULT_VOLTAGE_KV)
    parser.add_argument("--cs-mm", type=float, default=DEFAULT_CS_MM)
    parser.add_argument(
        "--amplitude-contrast", type=float, default=DEFAULT_AMPLITUDE_CONTRAST
    )


def ctf_of(
    args: argparse.Namespace,
    defocus_a: tuple[float, float, float],
    *,
    phase_shift_deg: float = 0.0,
) -> CtfParams:
    """The CTF of ``defocus_a`` (U, V in Å, angle in degrees) with the command's
    optics."""
    u, v, angle = defocus_a
    return CtfParams(
        defocus_u_a=float(u),
        defocus_v_a=float(v),
        astigmatism_angle_deg=float(angle),
        phase_shift_deg=phase_shift_deg,
        voltage_kv=args.voltage_kv,
        cs_mm=args.cs_mm,
        amplitude_contrast=args.amplitude_contrast,
    )


def ctf_from_args(args: argparse.Namespace) -> CtfParams | None:
    """The CTF of ``--defocus-a``, or ``None`` without it."""
    return None if args.defocus_a is None else ctf_of(args, tuple(args.defocus_a))
