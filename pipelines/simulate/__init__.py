"""The image-formation simulator: ground truth for tests, benchmarks and the demo.

Modules (import what you need; nothing is computed at import):

- :mod:`~pipelines.simulate.volumes`: phantom, real maps (MRC) and models (gemmi)
- :mod:`~pipelines.simulate.projection`: Fourier-slice projection, RELION Euler angles
- :mod:`~pipelines.simulate.optics`: CTF, detector MTF, radiation damage
- :mod:`~pipelines.simulate.micrograph`: particles at known places and poses
- :mod:`~pipelines.simulate.movie`: frames with drift, local motion, gain, defects
- :mod:`~pipelines.simulate.writers`: MRC, LZW TIFF and EER files

Typical use::

    rng = np.random.default_rng(0)
    frames, truth = simulate_movie(MovieParams(), rng)
    write_movie(frames, "movie.tiff", fmt=MovieFormat.TIFF, pixel_size_a=1.0)
"""

from __future__ import annotations

from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.movie import MovieParams, MovieTruth, simulate_movie
from pipelines.simulate.truth import MicrographTruth, ParticleTruth
from pipelines.simulate.writers import MovieFormat, write_movie

__all__ = [
    "MicrographParams",
    "MicrographTruth",
    "MovieFormat",
    "MovieParams",
    "MovieTruth",
    "ParticleTruth",
    "simulate_micrograph",
    "simulate_movie",
    "write_movie",
]
