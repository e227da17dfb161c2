"""The one array-module seam: ``xp`` is numpy on the CPU, cupy on a GPU.

Stages take an ``xp`` argument (default numpy) and use only functions that numpy
and cupy share; :func:`array_module` picks one, :func:`to_numpy` brings results back.
CuPy is optional; the CPU path is the default and is always tested.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = importlib.import_module("cupy")
        return bool(cp.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # noqa: BLE001 - any failure to reach CUDA means "no GPU"
        return False


def array_module(gpu: bool = False) -> ModuleType:
    """numpy, or cupy when ``gpu`` is true (raises ImportError if CuPy is missing)."""
    if not gpu:
        return np
    return importlib.import_module("cupy")


def fft_module(xp: ModuleType) -> ModuleType:
    """scipy.fft for numpy arrays, cupyx.scipy.fft for cupy arrays."""
    if xp is np:
        return importlib.import_module("scipy.fft")
    return importlib.import_module("cupyx.scipy.fft")


def module_of(array: Any) -> ModuleType:
    """The array module an array belongs to."""
    if type(array).__module__.startswith("cupy"):
        return importlib.import_module("cupy")
    return np


def to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of a numpy or cupy array."""
    if type(array).__module__.startswith("cupy"):
        return np.asarray(array.get())
    return np.asarray(array)
