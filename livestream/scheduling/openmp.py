"""OpenMP's idle threads in the service's processes: they sleep, they do not spin.

numba's parallel kernels (``prange``) run here on its ``omp`` threading layer,
GNU libgomp.  With ``OMP_WAIT_POLICY`` unset, libgomp's worker threads spin after
each parallel region, ``GOMP_SPINCOUNT`` = 300 000 turns (a few ms), before they
sleep.  A motion-corrected movie runs a few hundred short parallel kernels between
scipy.fft's transforms and NumPy's single-threaded work, so those threads spin
there: process CPU time counted for nothing, and a core taken from the FFT's own
threads on a machine with no spare core.  ``OMP_WAIT_POLICY=PASSIVE``
(``GOMP_SPINCOUNT`` 0: the threads sleep at once, a futex wake-up of tens of µs
starts the next region) cut a warm worker's CPU per 4096² × 40 movie from 10.4
to 9.1 s (means of four runs each) at the same wall time (``docs/motion_speed.md``,
*twelfth revision*).

libgomp reads its environment once, when it is loaded (numba loads it at the
first parallel kernel), so :func:`passive_openmp` must run before that: the pool
worker's initializer (:mod:`livestream.scheduling.executors`), the ``livestream``
command line (:func:`livestream.cli.main.main`, so the daemon's forkserver and
workers inherit it too) and the Dask nanny's ``pre-spawn-environ``
(:mod:`livestream.scheduling.dask_settings`).  A value already set (an
operator's ``OMP_WAIT_POLICY=ACTIVE``) is kept.  :func:`spin_count` reads back
what the loaded libgomp took.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import tempfile

__all__ = ["WAIT_POLICY", "libgomp_loaded", "passive_openmp", "spin_count"]

log = logging.getLogger(__name__)

WAIT_POLICY = "PASSIVE"
_ENV = "OMP_WAIT_POLICY"
_LIBGOMP = "libgomp.so.1"


def libgomp_loaded() -> bool:
    """Whether GNU libgomp is mapped into this process (Linux; False elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("/libgomp.so" in line for line in maps)
    except OSError:
        return False


def passive_openmp() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` in this process's environment unless it is set
    already; True when a libgomp loaded from now on reads it (libgomp not loaded
    yet), False (and a warning logged) when libgomp was loaded before and keeps
    the policy it read then."""
    os.environ.setdefault(_ENV, WAIT_POLICY)
    if libgomp_loaded():
        log.warning(
            "libgomp was loaded before %s was set: its threads keep the policy "
            "they read then",
            _ENV,
        )
        return False
    return True


def spin_count() -> int | None:
    """``GOMP_SPINCOUNT`` as the loaded libgomp took it (0 when its threads sleep
    at once, 300 000 at libgomp's default), from ``omp_display_env``'s verbose
    listing; None when libgomp is not loaded or has no ``omp_display_env``
    (before GCC 11).  For tests and checks: it writes to file descriptor 2."""
    if not libgomp_loaded():
        return None
    try:
        display = ctypes.CDLL(_LIBGOMP).omp_display_env
    except (OSError, AttributeError):
        return None
    display.argtypes = (ctypes.c_int,)
    display.restype = None
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            display(1)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    match = re.search(r"GOMP_SPINCOUNT = '(\d+)'", text)
    return None if match is None else int(match.group(1))
