"""Motion correction: global and local (patch) alignment, dose weighting, gain and defect correction, and the RELION MotionCorr file layer (``run_motion``)."""

from pipelines.motion.job import (
    MotionOutputs,
    MotionResult,
    correct_motion,
    read_gain,
    run_motion,
    write_corrected_micrographs_star,
)

__all__ = [
    "MotionOutputs",
    "MotionResult",
    "correct_motion",
    "read_gain",
    "run_motion",
    "write_corrected_micrographs_star",
]
