"""The local model's least-squares fits run on one BLAS thread (threaded
OpenBLAS spent 40x the CPU on these 1000 x 18 problems on a loaded machine)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import pipelines.motion.local as local_module


def _blas_threads() -> list[int]:
    return [
        int(pool["num_threads"])
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]


def test_the_fits_run_on_one_blas_thread(monkeypatch, rng):
    seen: list[list[int]] = []
    fit = local_module._fit_and_test

    def recorded(*args, **kwargs):
        seen.append(_blas_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(local_module, "_fit_and_test", recorded)
    monkeypatch.setattr(local_module, "REJECT_MARGIN", 0.0)  # fit the final one
    aligned = rng.standard_normal((8, 160, 160)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_threads()
        local_module.align_patches(
            aligned, 4, (640, 640), patches=(5, 5), bfactor_px2=150.0, workers=1
        )
    assert outside
    assert all(n == 2 for n in outside)  # the limit the fits must not inherit
    assert seen  # the final estimate was fitted here
    assert all(n == 1 for threads in seen for n in threads)
