"""A strict CPU stand-in for CuPy: the GPU branches of the ``xp`` seam run in CI.

Its arrays (:class:`ndarray`, whose module is ``cupy``, as :mod:`pipelines.xp`
checks) hold a NumPy array but behave as device arrays do where CuPy is strict:

* implicit conversion to NumPy (``np.asarray(x)``, a NumPy array built from one, a
  numba kernel or a SciPy function given one) raises ``TypeError``, as CuPy's
  ``__array__`` does; ``x.get()`` and ``cupy.asnumpy(x)`` are the explicit ways;
* arithmetic or a ``cupy.*`` function mixing a device array with a NumPy array
  (other than a scalar) raises ``TypeError``, as CuPy does;
* ``cupy.asarray`` / ``cupy.array`` copy host data to the "device".

NumPy functions called on device arrays dispatch through ``__array_function__`` and
``__array_ufunc__`` and return device arrays (CuPy implements both protocols).
What it cannot check: kernels, streams, memory pools and cuFFT plans (CUDA only;
``benchmarks/gpu_check.sh`` runs the same tests with the real CuPy on a GPU).

:func:`install` registers it as ``cupy``, ``cupyx``, ``cupyx.scipy`` and
``cupyx.scipy.fft`` in ``sys.modules``; :func:`uninstall` removes it.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.fft

IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
    "construct a NumPy array explicitly."
)
# functions that take host data on purpose
HOST_TO_DEVICE = frozenset({"asarray", "array", "asanyarray"})


def _is_host_array(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0


def _unwrap(value: Any, *, allow_host: bool, what: str) -> Any:
    if isinstance(value, ndarray):
        return value._a
    if _is_host_array(value):
        if not allow_host:
            raise TypeError(f"Unsupported type {type(value)} in {what}")
        return value
    if isinstance(value, tuple):
        return tuple(_unwrap(v, allow_host=allow_host, what=what) for v in value)
    if isinstance(value, list):
        return [_unwrap(v, allow_host=allow_host, what=what) for v in value]
    if isinstance(value, dict):
        return {
            k: _unwrap(v, allow_host=allow_host, what=what) for k, v in value.items()
        }
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_call(
    fn: Callable[..., Any], name: str, *, allow_host: bool = False
) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        args = _unwrap(args, allow_host=allow_host, what=name)
        kwargs = _unwrap(kwargs, allow_host=allow_host, what=name)
        return _wrap(fn(*args, **kwargs))

    return call


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
    """A "device" array: a NumPy array that refuses to become one implicitly."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __module__ = "cupy"  # what pipelines.xp.module_of recognises

    def __init__(self, host: np.ndarray) -> None:
        self._a = host

    # -- CuPy's explicit transfer and its refusal of implicit ones ---------------------
    def get(self) -> np.ndarray:
        return self._a.copy()

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(IMPLICIT)

    def __array_ufunc__(
        self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any
    ) -> Any:
        name = f"{ufunc.__name__}.{method}"
        inputs = _unwrap(inputs, allow_host=False, what=name)
        kwargs = _unwrap(kwargs, allow_host=False, what=name)
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        name = func.__name__
        args = _unwrap(args, allow_host=False, what=name)
        kwargs = _unwrap(kwargs, allow_host=False, what=name)
        return _wrap(func(*args, **kwargs))

    # -- the ndarray surface ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._a.dtype

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def T(self) -> ndarray:
        return ndarray(self._a.T)

    @property
    def real(self) -> ndarray:
        return ndarray(self._a.real)

    @real.setter
    def real(self, value: Any) -> None:
        self._a.real = _unwrap(value, allow_host=False, what="real")

    @property
    def imag(self) -> ndarray:
        return ndarray(self._a.imag)

    @property
    def flags(self) -> Any:
        return self._a.flags

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # __array_interface__, __array_struct__, buffers
            raise AttributeError(name)
        attribute = getattr(self._a, name)
        if callable(attribute):
            return _device_call(attribute, f"ndarray.{name}")
        return _wrap(attribute)

    def __getitem__(self, key: Any) -> Any:
        # CuPy takes NumPy index arrays (it copies them to the device)
        return _wrap(self._a[_unwrap(key, allow_host=True, what="__getitem__")])

    def __setitem__(self, key: Any, value: Any) -> None:
        key = _unwrap(key, allow_host=True, what="__setitem__")
        self._a[key] = _unwrap(value, allow_host=True, what="__setitem__")

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator[Any]:
        return (_wrap(row) for row in self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __index__(self) -> int:
        return self._a.__index__()

    def __repr__(self) -> str:
        return f"array({self._a!r}, device=standin)"


class _Namespace(types.ModuleType):
    """A module whose callables take and return device arrays."""

    def __init__(self, name: str, host: Any) -> None:
        super().__init__(name)
        self._host = host

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._host, name)
        if isinstance(attribute, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", attribute)
        if isinstance(attribute, type) or not callable(attribute):
            return attribute  # dtypes, constants, classes
        return _device_call(attribute, f"{self.__name__}.{name}")


def _asnumpy(value: Any) -> np.ndarray:
    return value.get() if isinstance(value, ndarray) else np.asarray(value)


def _build() -> dict[str, types.ModuleType]:
    cupy = _Namespace("cupy", np)
    cupy.ndarray = ndarray  # type: ignore[attr-defined]
    cupy.asnumpy = _asnumpy  # type: ignore[attr-defined]
    for name in HOST_TO_DEVICE:
        host = getattr(np, name)
        setattr(
            cupy,
            name,
            _device_call(
                lambda *a, _h=host, **k: _h(*a, **k).copy(), name, allow_host=True
            ),
        )
    cupy.ascontiguousarray = _device_call(np.ascontiguousarray, "ascontiguousarray")  # type: ignore[attr-defined]
    cupy.random = _Namespace("cupy.random", np.random)  # type: ignore[attr-defined]
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    cupyx_fft = _Namespace("cupyx.scipy.fft", scipy.fft)
    cupyx.scipy = cupyx_scipy  # type: ignore[attr-defined]
    cupyx_scipy.fft = cupyx_fft  # type: ignore[attr-defined]
    return {
        "cupy": cupy,
        "cupyx": cupyx,
        "cupyx.scipy": cupyx_scipy,
        "cupyx.scipy.fft": cupyx_fft,
    }


_MODULES = _build()


_SAVED: dict[str, types.ModuleType | None] = {}


def install() -> types.ModuleType:
    """Register the stand-in as ``cupy`` (and ``cupyx.scipy.fft``); returns it."""
    for name, module in _MODULES.items():
        _SAVED.setdefault(name, sys.modules.get(name))
        sys.modules[name] = module
    return _MODULES["cupy"]


def uninstall() -> None:
    """Put back whatever was registered under those names before (a real CuPy)."""
    for name, module in _MODULES.items():
        if sys.modules.get(name) is module:
            previous = _SAVED.pop(name, None)
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
