"""Reading posed particles: optics groups, origins, half sets, errors; batching and
CTF-premultiplied images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import write_particles_star
from pipelines.io.outputs import write_mrc
from pipelines.reconstruct import (
    PosedParticles,
    backproject,
    fourier_shell_correlation,
    read_posed_particles,
    reconstruct_halves,
    weights_to_map,
)
from pipelines.simulate.projection import euler_to_matrix


def _write(folder: Path, table: pd.DataFrame, optics: pd.DataFrame) -> Path:
    images = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    write_mrc(folder / "p.mrcs", images, pixel_size_a=2.0, float16=False)
    return write_particles_star(folder / "p.star", optics, table)


OPTICS = pd.DataFrame(
    {
        "rlnOpticsGroupName": ["a", "b"],
        "rlnOpticsGroup": [1, 2],
        "rlnVoltage": [300.0, 200.0],
        "rlnSphericalAberration": [2.7, 1.4],
        "rlnAmplitudeContrast": [0.1, 0.07],
        "rlnImagePixelSize": [2.0, 2.0],
        "rlnImageSize": [8, 8],
        "rlnImageDimensionality": [2, 2],
    }
)


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@p.mrcs" for i in range(1, 5)],
            "rlnAngleRot": [10.0, 20.0, 30.0, 40.0],
            "rlnAngleTilt": [50.0, 60.0, 70.0, 80.0],
            "rlnAnglePsi": [1.0, 2.0, 3.0, 4.0],
            "rlnOriginXAngst": [2.0, -4.0, 0.0, 1.0],
            "rlnOriginYAngst": [0.0, 6.0, 0.0, -1.0],
            "rlnDefocusU": [10000.0, 11000.0, 12000.0, 13000.0],
            "rlnDefocusV": [9000.0, 10000.0, 11000.0, 12000.0],
            "rlnDefocusAngle": [5.0, 6.0, 7.0, 8.0],
            "rlnOpticsGroup": [2, 1, 2, 1],
        }
    )


def test_star_columns_become_per_particle_arrays(tmp_path: Path) -> None:
    particles = read_posed_particles(_write(tmp_path, _table(), OPTICS))
    assert particles.n_particles == 4
    assert particles.pixel_size_a == 2.0
    np.testing.assert_array_equal(particles.voltage_kv, [200.0, 300.0, 200.0, 300.0])
    np.testing.assert_array_equal(particles.cs_mm, [1.4, 2.7, 1.4, 2.7])
    np.testing.assert_array_equal(particles.origin_px[:, 0], [1.0, -2.0, 0.0, 0.5])
    np.testing.assert_array_equal(particles.subset, [1, 2, 1, 2])  # row parity
    np.testing.assert_allclose(
        particles.rotations[1], euler_to_matrix(20.0, 60.0, 2.0), atol=1e-12
    )
    assert particles.images[2, 0, 0] == 2 * 64
    assert not particles.ctf_premultiplied.any()


def test_random_subset_and_errors(tmp_path: Path) -> None:
    table = _table()
    table["rlnRandomSubset"] = [2, 2, 1, 1]
    particles = read_posed_particles(_write(tmp_path, table, OPTICS))
    np.testing.assert_array_equal(particles.subset, [2, 2, 1, 1])
    table["rlnRandomSubset"] = [1, 2, 3, 1]
    with pytest.raises(StageInputError, match="rlnRandomSubset"):
        read_posed_particles(_write(tmp_path, table, OPTICS))
    with pytest.raises(StageInputError, match="rlnAngleTilt"):
        read_posed_particles(
            _write(tmp_path, _table().drop(columns="rlnAngleTilt"), OPTICS)
        )
    with pytest.raises(StageInputError, match="rlnVoltage"):
        read_posed_particles(
            _write(tmp_path, _table(), OPTICS.drop(columns="rlnVoltage"))
        )
    other_box = OPTICS.assign(rlnImageSize=[8, 10])
    with pytest.raises(StageInputError, match="rlnImageSize"):
        read_posed_particles(_write(tmp_path, _table(), other_box))
    with pytest.raises(StageInputError, match="absent"):
        read_posed_particles(tmp_path / "absent.star")


def test_batches_do_not_change_the_sums(clean_particles_32: PosedParticles) -> None:
    rows = np.arange(300)
    whole = backproject(clean_particles_32, rows=rows, symmetry="C2")
    batched = backproject(clean_particles_32, rows=rows, symmetry="C2", batch_size=7)
    np.testing.assert_allclose(batched.data, whole.data, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(batched.weight, whole.weight, rtol=1e-9, atol=1e-9)


def test_ctf_premultiplied_images_give_the_same_map(
    clean_particles_32: PosedParticles,
) -> None:
    p = clean_particles_32
    box = p.box_px
    ctfs = np.stack(
        [
            ctf_2d(
                (box, box),
                p.pixel_size_a,
                CtfParams(defocus_u_a=u, defocus_v_a=v, astigmatism_angle_deg=a),
            )
            for u, v, a in zip(
                p.defocus_u_a, p.defocus_v_a, p.astigmatism_angle_deg, strict=True
            )
        ]
    )
    premultiplied_images = scipy.fft.irfft2(
        scipy.fft.rfft2(p.images) * ctfs, s=(box, box)
    )
    premultiplied = PosedParticles.from_arrays(
        premultiplied_images,
        pixel_size_a=p.pixel_size_a,
        rotations=p.rotations,
        origin_px=p.origin_px,
        defocus_u_a=p.defocus_u_a,
        defocus_v_a=p.defocus_v_a,
        astigmatism_angle_deg=p.astigmatism_angle_deg,
        ctf_premultiplied=True,
    )
    plain = weights_to_map(backproject(p), ssnr=1000.0)
    pre = weights_to_map(backproject(premultiplied), ssnr=1000.0)
    fsc = fourier_shell_correlation(plain, pre, p.pixel_size_a).fsc
    assert fsc[1:12].min() > 0.98, np.round(fsc, 3)


def test_progress_is_reported_per_batch_over_both_halves(
    clean_particles_32: PosedParticles,
) -> None:
    calls: list[tuple[int, int]] = []
    rows = np.arange(40)
    subset = PosedParticles.from_arrays(
        clean_particles_32.images[rows],
        pixel_size_a=clean_particles_32.pixel_size_a,
        rotations=clean_particles_32.rotations[rows],
    )
    reconstruct_halves(
        subset, ssnr=100.0, on_progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(20, 40), (40, 40)]
    batched: list[tuple[int, int]] = []
    backproject(subset, batch_size=15, on_progress=lambda d, t: batched.append((d, t)))
    assert batched == [(15, 40), (30, 40), (40, 40)]
