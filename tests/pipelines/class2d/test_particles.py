"""Reading a RELION particles STAR into a ParticleStack: optics come from the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile

from pipelines.class2d import read_particle_stack
from pipelines.errors import StageInputError
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume


def _write_star(folder: Path, rng: np.random.Generator, *, drop: str = "") -> Path:
    volume = phantom_volume(16, 4.0, rng)
    data = simulate_views(
        volume, n_views=2, n_particles=6, pixel_size_a=4.0, snr=1.0, rng=rng
    )
    optics, particles = write_particle_set(folder, "Extract/p.mrcs", data, 4.0)
    optics["rlnSphericalAberration"] = [1.4]  # not the simulator's value: read back
    if drop:
        optics = optics.drop(columns=[drop])
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    return star


def test_optics_of_the_stack_come_from_data_optics(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    stack, _ = read_particle_stack(_write_star(tmp_path, rng))
    assert stack.n_particles == 6
    assert stack.cs_mm == pytest.approx(1.4)
    assert stack.voltage_kv == pytest.approx(300.0)
    assert stack.amplitude_contrast == pytest.approx(0.1)


def test_star_without_spherical_aberration_names_file_and_label(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    star = _write_star(tmp_path, rng, drop="rlnSphericalAberration")
    with pytest.raises(StageInputError) as caught:
        read_particle_stack(star)
    assert caught.value.path == star
    assert caught.value.field == "rlnSphericalAberration"
    assert str(star) in str(caught.value)
