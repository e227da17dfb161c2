"""Validated layout of ``profiles.toml`` and of a site's override file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DetectorEntry", "InstrumentEntry", "ProfilesFile"]


class DetectorEntry(BaseModel):
    """One ``[detectors.<key>]`` table; every field optional in a site file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    display_name: str | None = None
    physical_shape_px: tuple[int, int] | None = None
    counting: bool | None = None
    super_resolution_factor: Literal[1, 2] | None = None
    gain_rotation_deg: Literal[0, 90, 180, 270] | None = None
    gain_flip: Literal["none", "upside_down", "left_right"] | None = None
    mtf_files: dict[int, str] | None = None
    eer_grouping_target_e_per_a2: float | None = Field(default=None, gt=0, le=10)
    super_resolution_variant: str | None = None
    eer_variant: str | None = None

    @field_validator("physical_shape_px")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("both sizes must be positive")
        return value

    @field_validator("mtf_files")
    @classmethod
    def _voltages(cls, value: dict[int, str] | None) -> dict[int, str] | None:
        if value is not None and any(kv <= 0 for kv in value):
            raise ValueError("voltages (kV) must be positive")
        return value


class InstrumentEntry(BaseModel):
    """One ``[instruments."<id>"]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cs_mm: float = Field(ge=0, le=10)
    description: str = ""


class ProfilesFile(BaseModel):
    """A whole profiles file (shipped or site)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detectors: dict[str, DetectorEntry] = Field(default_factory=dict)
    names: dict[str, str] = Field(default_factory=dict)
    instruments: dict[str, InstrumentEntry] = Field(default_factory=dict)
