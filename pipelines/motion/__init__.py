"""Motion correction: global and local (patch) alignment, dose weighting, defect and gain correction, and the RELION MotionCorr file layer."""
