"""The CuPy stand-in is as strict as CuPy where the GPU branches could go wrong."""

from __future__ import annotations

from types import ModuleType

import numba
import numpy as np
import pytest
import scipy.ndimage

from pipelines.xp import fft_module, module_of, to_numpy


@numba.njit(cache=False)
def _total(values: np.ndarray) -> float:
    return float(values.sum())


@pytest.mark.parametrize("cupy", ["standin"], indirect=True)
def test_device_arrays_never_become_numpy_implicitly(cupy: ModuleType) -> None:
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = cupy.asarray(host)
    assert module_of(device) is cupy
    assert np.array_equal(to_numpy(device), host)
    assert np.array_equal(cupy.asnumpy(device * 2), host * 2)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(device)
    with pytest.raises((TypeError, numba.core.errors.TypingError)):
        _total(device)  # a numba kernel given a device array
    with pytest.raises(TypeError, match="Implicit conversion"):
        scipy.ndimage.gaussian_filter(device, 1.0)  # a CPU-only library
    with pytest.raises(TypeError, match="Unsupported type"):
        _ = device + host  # mixing device and host arrays
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.exp(host)  # a cupy function given a host array
    assert float(device.sum()) == 15.0  # a 0-d result may be read as a number
    assert module_of(np.exp(device)) is cupy  # NumPy functions dispatch to the device
    spectrum = fft_module(cupy).rfft2(device)
    assert module_of(spectrum) is cupy
    assert np.allclose(to_numpy(spectrum), np.fft.rfft2(host))
