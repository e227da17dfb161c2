"""A simulated microscope for the demo and the tests: writes an EPU or SerialEM
session the way the acquisition PC does.

EPU: ``EpuSession.dm`` and ``Images-Disc1/GridSquare_*/Data/*.xml`` in the session
folder, movies (``*_Fractions.mrc``) in the same relative folders of a separate
DoseFractions tree; XML and movie arrive in either order.  SerialEM: ``X.mrc`` and
``X.mrc.mdoc`` side by side.  Movies come from :mod:`pipelines.simulate` and are
written progressively (in chunks with a pause), as a network copy would.
Metadata goes through the mdcatch writers.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from mdcatch.epu.writer import (
    epu_exposure_relpath,
    write_epu_exposure_xml,
    write_epu_session_file,
)
from mdcatch.records import (
    CameraMode,
    Exposure,
    MovieFormat,
    Optics,
    Session,
    Software,
)
from mdcatch.serialem.writer import write_mdoc
from pipelines.ctf.model import CtfParams
from pipelines.simulate.micrograph import MicrographParams
from pipelines.simulate.movie import MovieParams, simulate_movie

__all__ = ["MicroscopeSettings", "SimulatedMicroscope", "make_exposure"]


# EPU's defocus list of the demo session, cycled hole by hole (µm, underfocus).
DEFOCUS_LIST_UM = (0.8, 1.1, 1.4, 1.7, 2.0, 2.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class MicroscopeSettings:
    software: Software = Software.EPU
    size_px: int = 512
    n_frames: int = 12
    pixel_size_a: float = 1.0
    voltage_kv: float = 300.0
    dose_per_frame_e_per_a2: float = 1.0
    n_particles: int = 15
    write_chunks: int = 2
    chunk_pause_s: float = 0.05
    noise_only: bool = False  # tiny noise movies (tests, benchmarks)


def make_exposure(
    index: int, settings: MicroscopeSettings, start_utc: datetime, session: Path
) -> Exposure:
    """The record of exposure ``index`` (paths filled in by the writer)."""
    acquired = start_utc + timedelta(seconds=index)
    grid_square = str(1000 + index // 50)
    foil_hole = str(20000 + index)
    data = f"{30000 + index}_{index % 7}"
    stamp = acquired.strftime("%Y%m%d_%H%M%S")
    if settings.software is Software.EPU:
        exposure_id = f"FoilHole_{foil_hole}_Data_{data}_{stamp}"
    else:
        exposure_id = f"demo_{index:05d}_{stamp}"
    return Exposure(
        exposure_id=exposure_id,
        software=settings.software,
        metadata_path=session,
        movie_path=None,
        acquired_utc=acquired,
        optics=Optics(
            voltage_kv=settings.voltage_kv,
            pixel_size_a=settings.pixel_size_a,
            detector="Falcon 4i" if settings.software is Software.EPU else "K3",
            camera_mode=CameraMode.COUNTING,
            instrument_id="3299",
        ),
        exposure_time_s=3.0,
        total_dose_e_per_a2=settings.dose_per_frame_e_per_a2 * settings.n_frames,
        n_frames=settings.n_frames,
        target_defocus_um=DEFOCUS_LIST_UM[index % len(DEFOCUS_LIST_UM)],
        grid_square_id=grid_square,
        foil_hole_id=foil_hole,
        software_version="3.9.1" if settings.software is Software.EPU else "4.1.8",
    )


class SimulatedMicroscope:
    """Writes exposures into ``session`` (and ``movies`` for EPU) one at a time."""

    def __init__(
        self,
        session: Path,
        movies: Path,
        settings: MicroscopeSettings,
        rng: np.random.Generator,
        *,
        start_utc: datetime | None = None,
    ) -> None:
        self.session = session
        self.movies = movies
        self.settings = settings
        self._rng = rng
        self._start = start_utc or datetime.now(UTC).replace(microsecond=0)
        self._staging = Path(tempfile.mkdtemp(prefix="livestream-microscope-"))
        # exposure id -> (n, 2) particle centres [x, y] in px where frame 0 shows
        # them (motion correction aligns every frame to the first)
        self.truth: dict[str, np.ndarray] = {}
        self.session.mkdir(parents=True, exist_ok=True)
        self.movies.mkdir(parents=True, exist_ok=True)
        if settings.software is Software.EPU:
            write_epu_session_file(
                Session(
                    name=session.name,
                    software=Software.EPU,
                    session_path=session,
                    start_utc=self._start,
                    movie_folder=movies,
                    movie_format=MovieFormat.MRC,
                    defocus_list_um=DEFOCUS_LIST_UM,
                ),
                session / "EpuSession.dm",
            )

    def close(self) -> None:
        for leftover in self._staging.iterdir():
            leftover.unlink()
        self._staging.rmdir()

    def paths_of(self, exposure: Exposure) -> tuple[Path, Path]:
        """(metadata path, movie path) where exposure ``index`` is written."""
        if self.settings.software is Software.EPU:
            assert exposure.grid_square_id is not None
            assert exposure.foil_hole_id is not None
            data = exposure.exposure_id.split("_Data_")[1].rsplit("_", 2)[0]
            relative = epu_exposure_relpath(
                exposure.grid_square_id,
                exposure.foil_hole_id,
                data,
                exposure.acquired_utc,
            )
            movie = self.movies / relative.parent / f"{relative.stem}_Fractions.mrc"
            return self.session / relative, movie
        movie = self.session / f"{exposure.exposure_id}.mrc"
        return movie.with_name(movie.name + ".mdoc"), movie

    def acquire(self, index: int, *, movie_first: bool | None = None) -> Exposure:
        """Simulate and write exposure ``index``; return its record."""
        exposure = make_exposure(index, self.settings, self._start, self.session)
        metadata_path, movie_path = self.paths_of(exposure)
        exposure = replace(exposure, metadata_path=metadata_path, movie_path=movie_path)
        staged = self._simulate_movie(exposure)
        if movie_first is None:
            movie_first = bool(self._rng.integers(2))
        if movie_first:
            self._copy_slowly(staged, movie_path)
            self._write_metadata(exposure)
        else:
            self._write_metadata(exposure)
            self._copy_slowly(staged, movie_path)
        staged.unlink()
        return exposure

    def _write_metadata(self, exposure: Exposure) -> None:
        exposure.metadata_path.parent.mkdir(parents=True, exist_ok=True)
        if self.settings.software is Software.EPU:
            write_epu_exposure_xml(exposure, exposure.metadata_path)
        else:
            session = Session(
                name=self.session.name,
                software=Software.SERIALEM,
                session_path=self.session,
                software_version="4.1.8",
            )
            write_mdoc(session, [exposure], exposure.metadata_path)

    def _simulate_movie(self, exposure: Exposure) -> Path:
        s = self.settings
        shape = (s.n_frames, s.size_px, s.size_px)
        if s.noise_only:
            frames = self._rng.poisson(1.0, size=shape).astype(np.uint8)
        else:
            # The true defocus scatters about the target (ice height, autofocus),
            # with a little astigmatism at a random angle.
            defocus_a = exposure.target_defocus_um * 1e4 + self._rng.normal(0.0, 800.0)
            astigmatism_a = self._rng.uniform(100.0, 600.0)
            ctf = CtfParams(
                defocus_u_a=defocus_a + astigmatism_a / 2,
                defocus_v_a=defocus_a - astigmatism_a / 2,
                astigmatism_angle_deg=self._rng.uniform(-90.0, 90.0),
                voltage_kv=s.voltage_kv,
            )
            params = MovieParams(
                micrograph=MicrographParams(
                    shape_px=(s.size_px, s.size_px),
                    pixel_size_a=s.pixel_size_a,
                    n_particles=s.n_particles,
                    ctf=ctf,
                ),
                n_frames=s.n_frames,
                dose_per_frame_e_per_a2=s.dose_per_frame_e_per_a2,
                gain_sd=0.0,
            )
            frames, truth = simulate_movie(params, self._rng, workers=1)
            self.truth[exposure.exposure_id] = truth.micrograph.coordinates_px
        staged = self._staging / f"{exposure.exposure_id}.mrc"
        import mrcfile

        with mrcfile.new(staged, overwrite=True) as mrc:
            mrc.set_data(np.asarray(frames, dtype=np.uint8))
            mrc.voxel_size = s.pixel_size_a
        return staged

    def _copy_slowly(self, source: Path, target: Path) -> None:
        """Copy in chunks with pauses: the file grows like one being written."""
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        n = max(1, self.settings.write_chunks)
        step = -(-len(data) // n)
        with open(target, "wb") as fh:
            for start in range(0, len(data), step):
                fh.write(data[start : start + step])
                fh.flush()
                if start + step < len(data):
                    time.sleep(self.settings.chunk_pause_s)
            os.fsync(fh.fileno())
