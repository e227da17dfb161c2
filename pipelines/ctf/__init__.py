"""CTF estimation: the CTF model, power spectra, the defocus and astigmatism search and fit, fit quality, and the RELION CtfFind file layer (``run_ctf``)."""

from pipelines.ctf.estimate import (
    CtfFit,
    TrustLimits,
    estimate_ctf,
)
from pipelines.ctf.job import (
    CtfOutputs,
    run_ctf,
)
from pipelines.ctf.model import (
    CtfParams,
    ctf_2d,
)

__all__ = [
    "CtfFit",
    "CtfOutputs",
    "CtfParams",
    "TrustLimits",
    "ctf_2d",
    "estimate_ctf",
    "run_ctf",
]
