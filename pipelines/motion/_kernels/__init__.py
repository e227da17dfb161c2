"""numba kernels of motion correction (private; use :mod:`pipelines.motion.job`).

One module per concern: :mod:`.core` (defect filling, warps, correlation,
holding and decoding the spectra), :mod:`.blocks` (the sums of the held
spectra), :mod:`.weights` (the refinement's SNR weighting), :mod:`.power`
(the power spectrum), :mod:`.gain` and :mod:`.defects` (frame preparation).
Callers check dtype, shape and contiguity; the kernels trust their inputs.
"""
