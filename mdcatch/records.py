"""Typed, immutable records of what is being acquired.

Units are in the field names.  Defocus is positive for underfocus (RELION's
convention), whatever sign the acquisition software wrote.  Times are timezone-aware
UTC.  Pixel sizes are those of the movie as written (a super-resolution movie has the
super-resolution pixel).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class Software(enum.Enum):
    """Acquisition software that wrote the metadata."""

    EPU = "EPU"
    SERIALEM = "SerialEM"


class MovieFormat(enum.Enum):
    """Container of a movie (or single image) file."""

    MRC = "mrc"
    TIFF = "tiff"
    EER = "eer"


class ImageKind(enum.Enum):
    """What an EPU/SerialEM image is for; only ``EXPOSURE`` is processed."""

    EXPOSURE = "exposure"
    GRID_SQUARE = "grid_square"
    FOIL_HOLE = "foil_hole"
    ATLAS = "atlas"
    TILT = "tilt"
    MONTAGE = "montage"


class CameraMode(enum.Enum):
    """How the detector counted."""

    INTEGRATING = "integrating"
    COUNTING = "counting"
    SUPER_RESOLUTION = "super_resolution"


class FrozenMap(Mapping[str, str]):
    """A read-only ``str -> str`` mapping that pickles (records cross process pools).

    ``types.MappingProxyType`` is read-only too, but cannot be pickled.
    """

    __slots__ = ("_data",)

    def __init__(
        self, data: Mapping[str, str] | Iterable[tuple[str, str]] = ()
    ) -> None:
        self._data: dict[str, str] = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, str]]]:
        return (FrozenMap, (self._data,))


def _freeze_extra(record: object) -> None:
    extra = getattr(record, "extra")  # noqa: B009 - called from __post_init__ only
    if not isinstance(extra, FrozenMap):
        object.__setattr__(record, "extra", FrozenMap(extra))


_EMPTY: Mapping[str, str] = FrozenMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class Optics:
    """Optical and detector settings shared by many exposures (a RELION optics group).

    ``pixel_size_a`` is the pixel of the movie as written; ``binning`` is the factor
    applied by the camera to the physical pixels (0.5 for SerialEM's super-resolution
    readout); ``super_resolution_factor`` is EPU's factor (2 for K3 super-resolution).
    ``cs_mm`` is ``None`` when the metadata does not record it (EPU never does);
    :func:`mdcatch.crosscheck.reconcile` fills it from the instrument profile.
    """

    voltage_kv: float
    pixel_size_a: float
    cs_mm: float | None = None
    amplitude_contrast: float = 0.1
    detector: str = ""
    camera_mode: CameraMode = CameraMode.COUNTING
    super_resolution_factor: int = 1
    binning: float = 1.0
    energy_filter_slit_ev: float | None = None
    phase_plate: bool = False
    instrument_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One movie with its acquisition metadata.

    ``exposure_id`` is the file stem shared by the metadata and the movie
    (``FoilHole_1_Data_2_3_20200320_090200`` for EPU); it is the key of the ledger.
    ``movie_path`` is ``None`` until the movie has been found.

    A *sub-exposure* is one part of a movie that holds several exposures (a
    SerialEM frame-set tilt series: one tilt per frame range): ``frame_range`` is
    its first and last frame, 0-based and inclusive, inside the movie of
    ``n_frames`` frames; ``total_dose_e_per_a2`` is that part's dose and
    ``prior_dose_e_per_a2`` the dose the area received before it.  ``frame_range``
    is ``None`` for an exposure that is the whole movie.
    """

    exposure_id: str
    software: Software
    metadata_path: Path
    movie_path: Path | None
    acquired_utc: datetime
    optics: Optics
    exposure_time_s: float
    total_dose_e_per_a2: float
    n_frames: int
    target_defocus_um: float
    kind: ImageKind = ImageKind.EXPOSURE
    dose_rate_e_per_px_s: float | None = None
    current_defocus_um: float | None = None
    magnification: float | None = None
    spot_size: int | None = None
    beam_shift: tuple[float, float] | None = None
    image_shift: tuple[float, float] | None = None
    stage_position_um: tuple[float, float, float] | None = None
    stage_alpha_deg: float | None = None
    grid_square_id: str | None = None
    foil_hole_id: str | None = None
    software_version: str = ""
    gain_reference_path: Path | None = None
    defect_file_path: Path | None = None
    camera_index: int | None = None
    frame_doses: tuple[tuple[int, float], ...] = ()
    frame_range: tuple[int, int] | None = None
    prior_dose_e_per_a2: float | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _freeze_extra(self)

    @property
    def n_exposure_frames(self) -> int:
        """Frames of this exposure: the movie's, or its ``frame_range``'s."""
        if self.frame_range is None:
            return self.n_frames
        return self.frame_range[1] - self.frame_range[0] + 1

    @property
    def dose_per_frame_e_per_a2(self) -> float:
        """Mean dose per frame of this exposure (e/Å²)."""
        return self.total_dose_e_per_a2 / self.n_exposure_frames


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """An acquisition session: where it is, and what the acquisition software said."""

    name: str
    software: Software
    session_path: Path
    start_utc: datetime | None = None
    movie_folder: Path | None = None
    storage_folder_raw: str = ""
    movie_format: MovieFormat | None = None
    output_format_raw: str = ""
    image_file_format: str = ""
    defocus_list_um: tuple[float, ...] = ()
    grid_square_ids: tuple[str, ...] = ()
    software_version: str = ""
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        _freeze_extra(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class MovieHeader:
    """What a movie's header says, read without loading the frames.

    ``shape`` is ``(n_frames, ny, nx)``; ``pixel_size_a`` is ``None`` when the header
    does not record one (most TIFFs).  For EER, ``n_frames`` is the number of raw
    EER frames and ``shape`` is at the sensor's native resolution.
    """

    path: Path
    format: MovieFormat
    shape: tuple[int, int, int]
    dtype: str
    pixel_size_a: float | None = None
    compression: str = ""
    size_bytes: int = 0
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        _freeze_extra(self)

    @property
    def n_frames(self) -> int:
        return self.shape[0]
