"""Reconcile what the metadata says with what the movie header says.

Example::

    from mdcatch.crosscheck import reconcile
    from mdcatch.headers.movie import read_movie_header
    from mdcatch.profiles.detectors import load_profiles
    exposure = reconcile(exposure, read_movie_header(exposure.movie_path), load_profiles())
    for warning in exposure.warnings:
        print(warning)

Rules, in order; every correction adds a warning to the record naming its rule:

1. **Cs**: unknown Cs is taken from the instrument profile; failing that 2.7 mm.
2. **Header pixel size** (MRC): within 1 % of the metadata it confirms it; half
   or twice the metadata means a super-resolution or binned movie and the pixel
   size follows the movie; any other value is distrusted (MotionCor2 and others
   write 0 or 1 Å) and the metadata kept.
3. **Movie dimensions** (TIFF/EER carry no pixel size): the movie's size against
   the detector's sensor (profile) gives its sampling in physical pixels (0.5 for
   a full super-resolution frame, 1, or 2); if the metadata's sampling differs
   (the K3 binning / super-resolution ambiguity), the pixel size is rescaled.
   SerialEM's sampling is its ``Binning``; EPU's is ``Binning /
   SuperResolutionFactor``.  Cropped readouts are not judged.
4. **Frames**: an EER movie has many raw frames per EPU fraction: ``n_frames``
   becomes the raw count and ``extra["eer_group_frames"]`` the grouping that
   reaches the profile's dose per fraction.  Otherwise a differing count is
   resolved in favour of the movie header.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from mdcatch.errors import MetadataError
from mdcatch.profiles.detectors import DetectorProfile, Profiles
from mdcatch.records import CameraMode, Exposure, MovieFormat, MovieHeader, Optics

__all__ = ["DEFAULT_CS_MM", "reconcile"]

DEFAULT_CS_MM = 2.7
_TOLERANCE = 0.01
_SAMPLINGS = (0.5, 1.0, 2.0)


def reconcile(
    exposure: Exposure, header: MovieHeader | None, profiles: Profiles
) -> Exposure:
    """``exposure`` with Cs filled and pixel size and frames checked against ``header``."""
    notes: list[str] = []
    extra = dict(exposure.extra)
    optics = _fill_cs(exposure.optics, profiles, notes)
    n_frames, frame_doses = exposure.n_frames, exposure.frame_doses
    if header is not None:
        profile = _profile(optics, header, profiles, notes)
        if header.pixel_size_a is not None:
            optics = _check_header_pixel(optics, header, notes)
        elif profile is not None:
            optics = _check_dimensions(optics, header, profile, notes)
        if header.format is MovieFormat.EER:
            n_frames, frame_doses = _eer_frames(exposure, header, profile, extra, notes)
        elif header.n_frames != exposure.n_frames:
            notes.append(
                f"metadata says {exposure.n_frames} frames, movie header {header.n_frames}: "
                "n_frames set to the header's (rule: the movie header wins on frame count)"
            )
            n_frames = header.n_frames
    return replace(
        exposure,
        optics=optics,
        n_frames=n_frames,
        frame_doses=frame_doses,
        extra=MappingProxyType(extra),
        warnings=(*exposure.warnings, *notes),
    )


def _fill_cs(optics: Optics, profiles: Profiles, notes: list[str]) -> Optics:
    if optics.cs_mm is not None:
        return optics
    cs = (
        profiles.instrument_cs_mm(optics.instrument_id)
        if optics.instrument_id
        else None
    )
    if cs is None:
        which = (
            f"Cs unknown for instrument {optics.instrument_id!r}"
            if optics.instrument_id
            else "no Cs and no instrument ID in the metadata"
        )
        notes.append(
            f"{which}: assumed {DEFAULT_CS_MM} mm "
            "(rule: default Cs; add the instrument to the site profiles)"
        )
        cs = DEFAULT_CS_MM
    return replace(optics, cs_mm=cs)


def _profile(
    optics: Optics, header: MovieHeader, profiles: Profiles, notes: list[str]
) -> DetectorProfile | None:
    if not optics.detector:
        if header.pixel_size_a is None:
            notes.append(
                "metadata names no detector: movie dimensions "
                f"{header.shape[2]}x{header.shape[1]} not checked against the pixel size"
            )
        return None
    try:
        return profiles.detector_for(
            optics.detector, camera_mode=optics.camera_mode, movie_format=header.format
        )
    except MetadataError:
        if header.pixel_size_a is None:
            notes.append(
                f"no detector profile for {optics.detector!r}: movie dimensions "
                f"{header.shape[2]}x{header.shape[1]} not checked against the pixel size"
            )
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _TOLERANCE * abs(b)


def _check_header_pixel(
    optics: Optics, header: MovieHeader, notes: list[str]
) -> Optics:
    meta, movie = optics.pixel_size_a, header.pixel_size_a
    assert movie is not None
    if _close(movie, meta):
        return optics
    for factor, what in ((0.5, "super-resolution"), (2.0, "binned by 2")):
        if _close(movie, meta * factor):
            notes.append(
                f"movie header pixel {movie:.4g} Å is {factor:g} x the metadata's {meta:.4g} Å: "
                f"pixel size set to {meta * factor:.4g} Å (rule: header pixel = {factor:g} x "
                f"metadata means a {what} movie)"
            )
            return _resample(optics, meta * factor, optics.binning * factor)
    notes.append(
        f"movie header pixel {movie:.4g} Å disagrees with the metadata's {meta:.4g} Å: "
        "metadata kept (rule: an unrelated header pixel size is not trusted)"
    )
    return optics


def _metadata_sampling(optics: Optics) -> float:
    """Movie pixels in physical pixels that the metadata implies."""
    if optics.binning < 1.0:
        return optics.binning  # SerialEM: Binning = 0.5 is super-resolution
    return optics.binning / max(optics.super_resolution_factor, 1)  # EPU


def _check_dimensions(
    optics: Optics, header: MovieHeader, profile: DetectorProfile, notes: list[str]
) -> Optics:
    ny, nx = header.shape[1], header.shape[2]
    phys_y, phys_x = profile.physical_shape_px
    movie_sampling = next(
        (
            s
            for s in _SAMPLINGS
            if {(round(phys_y / s), round(phys_x / s))} & {(ny, nx), (nx, ny)}
        ),
        None,
    )
    if movie_sampling is None:
        return optics  # cropped or unusual readout: not judged
    meta_sampling = _metadata_sampling(optics)
    if _close(movie_sampling, meta_sampling):
        return optics
    pixel = optics.pixel_size_a * movie_sampling / meta_sampling
    notes.append(
        f"movie is {nx}x{ny}: {movie_sampling:g} physical pixel per movie pixel on the "
        f"{phys_x}x{phys_y} sensor of the {profile.display_name}, metadata implies "
        f"{meta_sampling:g}: pixel size {optics.pixel_size_a:.4g} -> {pixel:.4g} Å "
        "(rule: movie dimensions against the detector profile; the K3 binning / "
        "super-resolution ambiguity)"
    )
    return _resample(optics, pixel, movie_sampling)


def _resample(optics: Optics, pixel: float, sampling: float) -> Optics:
    super_res = sampling < 1.0
    return replace(
        optics,
        pixel_size_a=pixel,
        binning=sampling,
        camera_mode=CameraMode.SUPER_RESOLUTION if super_res else CameraMode.COUNTING,
        super_resolution_factor=round(1.0 / sampling) if super_res else 1,
    )


def _eer_frames(
    exposure: Exposure,
    header: MovieHeader,
    profile: DetectorProfile | None,
    extra: dict[str, str],
    notes: list[str],
) -> tuple[int, tuple[tuple[int, float], ...]]:
    raw = header.n_frames
    dose_per_raw = exposure.total_dose_e_per_a2 / raw
    target = profile.eer_grouping_target_e_per_a2 if profile else None
    extra["eer_fractions_in_metadata"] = str(exposure.n_frames)
    grouping = ""
    if target is not None and dose_per_raw > 0:
        group = max(1, min(raw, round(target / dose_per_raw)))
        extra["eer_group_frames"] = str(group)
        grouping = f"; grouped by {group} for {target:g} e/Å² per fraction"
    if raw != exposure.n_frames:
        notes.append(
            f"EER movie has {raw} raw frames, metadata {exposure.n_frames} fractions: "
            f"n_frames set to {raw}{grouping} (rule: EER raw frames replace the "
            "metadata's fractions)"
        )
    return raw, ((raw, dose_per_raw),)
