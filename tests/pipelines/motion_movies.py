"""Small synthetic movies with known motion for the motion-correction tests.

A band-limited random texture (a stand-in for ice and particles, with signal out to
~1/3 of Nyquist and beyond) is displaced per frame by a known drift (exact Fourier
shift) or by drift plus a smooth local field (cubic resampling), optionally damaged
by dose (Grant & Grigorieff), multiplied by a detector sensitivity and sampled with
Poisson noise.  ``drift_px[i]`` is the displacement of the content of frame ``i``;
the correction motion correction should find is ``-(drift_px[i] - drift_px[0])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.motion.dose import critical_exposure_e_per_a2
from pipelines.motion.local import spatial_basis


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticMovie:
    frames: np.ndarray  # (n, ny, nx) float32 counts
    clean: np.ndarray  # (ny, nx) undamaged, unshifted image (frame-0 position)
    drift_px: np.ndarray  # (n, 2) [x, y] content displacement
    local_amplitude_px: float

    def local_field_px(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Local displacement ``(n, n_points, 2)`` at unbinned pixel positions."""
        n = self.frames.shape[0]
        ny, nx = self.frames.shape[1:]
        u = x / nx - 0.5
        v = y / ny - 0.5
        z = np.arange(n)[:, None] / max(n - 1, 1)
        a = self.local_amplitude_px
        lx = a * z * (u + 2 * v * v - 0.3)[None]
        ly = a * z * z * (-v + 1.5 * u * v + 0.2)[None]
        return np.stack([lx, ly], axis=-1)

    def true_correction_px(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Correction field ``(n, n_points, 2)`` relative to frame 0 (RELION sign)."""
        total = self.drift_px[:, None, :] + self.local_field_px(x, y)
        return -(total - total[0:1])


def make_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    amplitude = np.maximum(k, 1.0 / max(ny, nx)) ** -0.8 * np.exp(-((k / 0.35) ** 2))
    image = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * amplitude))
    return image / image.std()


def default_drift(n_frames: int) -> np.ndarray:
    t = np.arange(n_frames, dtype=float)
    return np.stack(
        [4.0 * np.sqrt(t + 1) - 4.0 + 0.15 * t, -3.0 * np.log1p(t) + 0.1 * t], 1
    )


def make_movie(
    rng: np.random.Generator,
    *,
    n_frames: int = 20,
    size: int = 512,
    dose_per_frame_e_per_a2: float = 1.5,
    pixel_size_a: float = 1.0,
    contrast: float = 0.3,
    drift_px: np.ndarray | None = None,
    local_amplitude_px: float = 0.0,
    damage_voltage_kv: float | None = None,
    sensitivity: np.ndarray | None = None,
) -> SyntheticMovie:
    shape = (size, size)
    clean = make_texture(rng, shape)
    drift = default_drift(n_frames) if drift_px is None else np.asarray(drift_px, float)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.fftfreq(size)[None, :]
    spectrum = np.fft.fft2(clean)
    k_per_a = np.sqrt(ky * ky + kx * kx) / pixel_size_a
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    movie = SyntheticMovie(
        frames=np.empty((n_frames, *shape), np.float32),
        clean=clean,
        drift_px=drift,
        local_amplitude_px=local_amplitude_px,
    )
    local = movie.local_field_px(xx.ravel(), yy.ravel()).reshape(
        n_frames, size, size, 2
    )
    mean_counts = dose_per_frame_e_per_a2 * pixel_size_a**2
    for i in range(n_frames):
        damaged = spectrum
        if damage_voltage_kv is not None:
            exposure = dose_per_frame_e_per_a2 * (i + 0.5)
            ne = critical_exposure_e_per_a2(k_per_a, damage_voltage_kv)
            damaged = spectrum * np.exp(-0.5 * exposure / ne)
        if local_amplitude_px:
            image = np.real(np.fft.ifft2(damaged))
            coords = [
                yy - drift[i, 1] - local[i, ..., 1],
                xx - drift[i, 0] - local[i, ..., 0],
            ]
            image = ndimage.map_coordinates(image, coords, order=3, mode="wrap")
        else:
            ramp = np.exp(-2j * np.pi * (kx * drift[i, 0] + ky * drift[i, 1]))
            image = np.real(np.fft.ifft2(damaged * ramp))
        intensity = mean_counts * np.clip(1.0 + contrast * image, 0.0, None)
        if sensitivity is not None:
            intensity = intensity * sensitivity
        movie.frames[i] = rng.poisson(intensity)
    return movie


def true_local_coefficients(movie: SyntheticMovie, n: int, size: int) -> np.ndarray:
    """The movie's true local correction as RELION's polynomial, ``(2, 18)``:
    least squares over a grid of 16 x 16 points or finer; the simulated field is
    linear and quadratic in time over (1, u, v²) and (1, v, uv), so in the basis
    and fitted exactly."""
    step = max(size // 16, 1)
    y, x = (a.ravel() for a in np.mgrid[0:size:step, 0:size:step].astype(float))
    drift = -(movie.drift_px - movie.drift_px[0])
    local = movie.true_correction_px(x, y) - drift[:, None, :]
    z = np.arange(n, dtype=float)
    zpow = np.stack([z, z * z, z**3], axis=-1)
    basis = spatial_basis(x / size - 0.5, y / size - 0.5)
    design = np.einsum("zp,ng->zngp", zpow, basis).reshape(-1, 18)
    fit = [np.linalg.lstsq(design, local[..., a].ravel())[0] for a in (0, 1)]
    return np.stack(fit)


def _encode_eer_frame(events: np.ndarray, shape: tuple[int, int]) -> bytes:
    """EER 7-2-2 bit stream (compression 65001) of one frame.

    ``events`` is ``(n, 2)`` [y, x] positions on the 4× sub-pixel grid, at most one
    per physical pixel.  Layout as the EER specification (LSB-first codes: 7-bit
    skip, 127 = skip without event; then 2+2 sub-pixel bits stored XOR 2), ending
    with a skip that lands exactly on the last pixel.
    """
    ny, nx = shape
    sy, sx = events[:, 0], events[:, 1]
    pixel = (sy // 4) * nx + sx // 4
    order = np.argsort(pixel)
    bits: list[int] = []

    def put(value: int, n_bits: int) -> None:
        bits.extend((int(value) >> b) & 1 for b in range(n_bits))

    previous = 0
    for p, h, v in zip(pixel[order], sx[order] % 4, sy[order] % 4, strict=True):
        skip = int(p) - previous
        while skip >= 127:
            put(127, 7)
            skip -= 127
        put(skip, 7)
        put(int(h) ^ 2, 2)
        put(int(v) ^ 2, 2)
        previous = int(p) + 1
    remaining = ny * nx - previous
    while remaining >= 127:
        put(127, 7)
        remaining -= 127
    put(remaining, 7)
    bits.extend([0] * (11 + (-(len(bits) + 11)) % 16))
    packed = np.packbits(np.array(bits, np.uint8).reshape(-1, 8)[:, ::-1], axis=1)
    return packed.ravel().tobytes()


def write_eer(path: str, events: list[np.ndarray], shape: tuple[int, int]) -> None:
    """Write raw EER frames (one ``(n, 2)`` sub-pixel event list each) as a BigTIFF.

    tifffile cannot encode EER, so each frame is written as an uncompressed strip
    holding the EER bit stream and the Compression tag is patched to 65001.
    """
    import tifffile

    ny, nx = shape
    metadata = b"<metadata><item name='numberOfFrames'>%d</item></metadata>" % len(
        events
    )
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for index, frame_events in enumerate(events):
            stream = np.frombuffer(_encode_eer_frame(frame_events, shape), np.uint8)
            if stream.size > ny * nx:
                raise ValueError("too many events for this test writer")
            strip = np.zeros(ny * nx, np.uint8)
            strip[: stream.size] = stream
            extratags = (
                [(65001, 7, len(metadata), metadata, True)] if index == 0 else []
            )
            writer.write(strip.reshape(ny, nx), rowsperstrip=ny, extratags=extratags)
    with tifffile.TiffFile(path, mode="r+") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(65001)


def random_eer_events(
    rng: np.random.Generator, n_frames: int, shape: tuple[int, int], rate: float
) -> list[np.ndarray]:
    """Per-frame events: each physical pixel hit with probability ``rate``."""
    events = []
    for _ in range(n_frames):
        yy, xx = np.nonzero(rng.random(shape) < rate)
        sub = rng.integers(0, 4, (yy.size, 2))
        events.append(np.stack([yy * 4 + sub[:, 0], xx * 4 + sub[:, 1]], axis=1))
    return events
