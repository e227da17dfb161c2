"""RELION particle tables <-> cryoSPARC datasets (``.cs``), through cryosparc-tools.

The ``.cs`` side is cryosparc-tools' :class:`~cryosparc.dataset.Dataset` (a
structured array saved as ``.npy``); we never parse ``.cs`` ourselves.  Field names,
dtypes and conventions (checked against a real cryoSPARC ``.cs``, cryosparc-tools
and pyem's ``csparc2star``; ``docs/cryosparc.md`` has the table):

- ``blob/path`` + ``blob/idx`` (0-based) <-> ``rlnImageName`` ``NNNNNN@path``
  (1-based); ``blob/shape`` ``[ny, nx]``, ``blob/psize_A`` <-> ``data_optics``.
- ``ctf/df1_A``, ``df2_A`` <-> ``rlnDefocusU/V``; ``ctf/df_angle_rad`` and
  ``ctf/phase_shift_rad`` are radians where RELION has degrees;
  ``ctf/exp_group_id`` <-> ``rlnOpticsGroup``; voltage, Cs, amplitude contrast are
  per particle in cryoSPARC and per optics group in RELION.
- ``location/center_{x,y}_frac`` = ``rlnCoordinate{X,Y}`` / micrograph width or
  height; ``location/micrograph_shape`` is ``[ny, nx]``; no axis is flipped (what
  cryoSPARC's own STAR import assumes for RELION coordinates).
- ``alignments3D/pose`` is a rotation vector (:mod:`pipelines.exchange.poses`);
  ``alignments*/shift`` is RELION's origin in pixels of ``alignments*/psize_A``;
  ``split`` and ``class`` are 0-based where ``rlnRandomSubset`` and
  ``rlnClassNumber`` are 1-based.
- ``uid``: a 64-bit hash of ``rlnImageName`` (``location/micrograph_uid``: of
  ``rlnMicrographName``, the exposure's ``uid``), so exporting twice gives the same
  uids and particles link to their exposures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset

from pipelines.errors import StageInputError
from pipelines.exchange.poses import euler_to_rotvec, rotvec_to_euler

__all__ = [
    "BLOB_SIGN_WHITE_PARTICLES",
    "dataset_to_particles",
    "exposures_to_dataset",
    "particles_to_dataset",
    "stable_uids",
]

# our extraction writes white particles on a dark background (RELION's
# --invert_contrast); cryoSPARC's own extraction keeps them dark and writes -1
BLOB_SIGN_WHITE_PARTICLES = 1.0
CTF_TYPE = "imported"
_PARTICLE_COLUMNS = ("rlnImageName",)
_OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
_REQUIRED_CS = (
    "blob/path",
    "blob/idx",
    "blob/shape",
    "blob/psize_A",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
)


def stable_uids(names: Any) -> np.ndarray:
    """64-bit uids hashed from strings (pandas' vectorised, seedless hash)."""
    series = pd.Series(np.asarray(names, dtype=object))
    uids: np.ndarray = pd.util.hash_pandas_object(series, index=False).to_numpy(
        np.uint64
    )
    return uids


def _require(source: Any, table: Any, columns: tuple[str, ...], block: str) -> None:
    for column in columns:
        if column not in table.columns:
            raise StageInputError(source, column, None, f"missing from {block}")


def _split_image_names(source: Any, names: pd.Series) -> tuple[np.ndarray, Any]:
    """``NNNNNN@path`` -> (0-based index ``(n,)`` uint32, paths ``(n,)`` object)."""
    text = names.astype(str)
    no_at = ~text.str.contains("@", regex=False)
    if no_at.any():
        bad = text[no_at].iloc[0]
        raise StageInputError(source, "rlnImageName", bad, "must be NNNNNN@stack")
    parts = text.str.split("@", n=1, expand=True)
    index = pd.to_numeric(parts[0], errors="coerce")
    if index.isna().any() or (index < 1).any():
        bad = names[index.isna() | (index < 1)].iloc[0]
        raise StageInputError(source, "rlnImageName", bad, "index must be >= 1")
    return (index.to_numpy() - 1).astype(np.uint32), parts[1].to_numpy(dtype=object)


def _column(table: Any, name: str, default: float, dtype: Any = np.float32) -> Any:
    if name in table.columns:
        return table[name].to_numpy(dtype=np.float64).astype(dtype)
    return np.full(len(table), default, dtype=dtype)


def _ctf_fields(merged: Any, n: int) -> dict[str, np.ndarray]:
    """``ctf/*`` from particle rows with their optics columns merged in."""
    zeros2 = np.zeros((n, 2), np.float32)
    return {
        "ctf/type": np.full(n, CTF_TYPE, dtype=object),
        "ctf/exp_group_id": merged["rlnOpticsGroup"].to_numpy().astype(np.uint32),
        "ctf/accel_kv": _column(merged, "rlnVoltage", 0.0),
        "ctf/cs_mm": _column(merged, "rlnSphericalAberration", 0.0),
        "ctf/amp_contrast": _column(merged, "rlnAmplitudeContrast", 0.0),
        "ctf/df1_A": _column(merged, "rlnDefocusU", 0.0),
        "ctf/df2_A": _column(merged, "rlnDefocusV", 0.0),
        "ctf/df_angle_rad": np.deg2rad(_column(merged, "rlnDefocusAngle", 0.0)),
        "ctf/phase_shift_rad": np.deg2rad(_column(merged, "rlnPhaseShift", 0.0)),
        "ctf/scale": _column(merged, "rlnCtfScalefactor", 1.0),
        "ctf/bfactor": _column(merged, "rlnCtfBfactor", 0.0),
        # higher-order aberrations are never estimated here: cryoSPARC's zeros
        "ctf/shift_A": zeros2,
        "ctf/tilt_A": zeros2.copy(),
        "ctf/trefoil_A": zeros2.copy(),
        "ctf/tetra_A": np.zeros((n, 4), np.float32),
        "ctf/anisomag": np.zeros((n, 4), np.float32),
    }


def _location_fields(
    source: Any, merged: Any, shapes: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    names = merged["rlnMicrographName"].astype(str)
    missing = sorted(set(names.unique()) - set(shapes))
    if missing:
        raise StageInputError(
            source, "rlnMicrographName", missing[0], "micrograph size unknown"
        )
    shape_table = pd.DataFrame(
        [(k, v[0], v[1]) for k, v in shapes.items()], columns=["name", "ny", "nx"]
    ).set_index("name")
    ny = shape_table["ny"].reindex(names).to_numpy(np.float64)
    nx = shape_table["nx"].reindex(names).to_numpy(np.float64)
    if "rlnMicrographPixelSize" in merged.columns:
        psize = _column(merged, "rlnMicrographPixelSize", 0.0)
    else:
        psize = _column(merged, "rlnMicrographOriginalPixelSize", 0.0)
    return {
        "location/micrograph_uid": stable_uids(names),
        "location/micrograph_path": names.to_numpy(dtype=object),
        "location/micrograph_shape": np.stack([ny, nx], axis=1).astype(np.uint32),
        "location/micrograph_psize_A": psize,
        "location/center_x_frac": (
            _column(merged, "rlnCoordinateX", 0.0, np.float64) / nx
        ).astype(np.float32),
        "location/center_y_frac": (
            _column(merged, "rlnCoordinateY", 0.0, np.float64) / ny
        ).astype(np.float32),
    }


def _alignment_shift(merged: Any, px: np.ndarray) -> np.ndarray:
    x = _column(merged, "rlnOriginXAngst", 0.0, np.float64) / px
    y = _column(merged, "rlnOriginYAngst", 0.0, np.float64) / px
    return np.stack([x, y], axis=1).astype(np.float32)


def _alignments2d_fields(
    merged: Any, px: np.ndarray, classified: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(merged)
    cls = _column(merged, "rlnClassNumber", 1.0, np.float64)
    posterior = _column(merged, "rlnMaxValueProbDistribution", 1.0)
    return {
        "alignments2D/split": np.zeros(n, np.uint32),
        "alignments2D/shift": _alignment_shift(merged, px),
        "alignments2D/pose": np.deg2rad(_column(merged, "rlnAnglePsi", 0.0)),
        "alignments2D/psize_A": px.astype(np.float32),
        "alignments2D/class": np.where(classified, cls - 1, 0).astype(np.uint32),
        "alignments2D/class_posterior": np.where(classified, posterior, 0.0).astype(
            np.float32
        ),
    }


def _alignments3d_fields(merged: Any, px: np.ndarray) -> dict[str, np.ndarray]:
    n = len(merged)
    pose = euler_to_rotvec(
        _column(merged, "rlnAngleRot", 0.0, np.float64),
        _column(merged, "rlnAngleTilt", 0.0, np.float64),
        _column(merged, "rlnAnglePsi", 0.0, np.float64),
    )
    split = _column(merged, "rlnRandomSubset", 1.0, np.float64) - 1
    return {
        "alignments3D/split": np.clip(split, 0, None).astype(np.uint32),
        "alignments3D/shift": _alignment_shift(merged, px),
        "alignments3D/pose": pose.astype(np.float32),
        "alignments3D/psize_A": px.astype(np.float32),
        "alignments3D/class": (_column(merged, "rlnClassNumber", 1.0, np.float64) - 1)
        .clip(0, None)
        .astype(np.uint32),
        "alignments3D/class_posterior": np.ones(n, np.float32),
    }


def particles_to_dataset(
    optics: Any,
    particles: Any,
    *,
    source: str | Path,
    micrograph_shapes: Mapping[str, tuple[int, int]] | None = None,
    alignments2d: Any = None,
    blob_sign: float = BLOB_SIGN_WHITE_PARTICLES,
) -> Dataset:
    """A cryoSPARC particle dataset from a RELION ``data_optics`` + ``data_particles``.

    ``micrograph_shapes``: ``rlnMicrographName`` -> ``(ny, nx)``; with it (and
    ``rlnCoordinateX/Y`` in the table) ``location/*`` is written.
    ``alignments2d``: a Class2D ``_data.star`` particles table; its rows are matched
    by ``rlnImageName`` and become ``alignments2D/*`` (particles it lacks get
    ``class_posterior`` 0: not classified yet).  ``alignments3D/*`` is written when
    the table has ``rlnAngleRot`` and ``rlnAngleTilt`` (a refinement's output).
    """
    _require(source, particles, _PARTICLE_COLUMNS, "data_particles")
    _require(source, optics, _OPTICS_COLUMNS, "data_optics")
    table = particles.reset_index(drop=True)
    if "rlnOpticsGroup" not in table.columns:
        table = table.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
    shared = [c for c in optics.columns if c in table.columns and c != "rlnOpticsGroup"]
    merged = table.drop(columns=shared).merge(
        optics, on="rlnOpticsGroup", how="left", validate="many_to_one"
    )
    if merged["rlnImagePixelSize"].isna().any():
        bad = merged.loc[merged["rlnImagePixelSize"].isna(), "rlnOpticsGroup"].iloc[0]
        raise StageInputError(source, "rlnOpticsGroup", bad, "not in data_optics")
    n = len(merged)
    idx, paths = _split_image_names(source, merged["rlnImageName"])
    px = merged["rlnImagePixelSize"].to_numpy(np.float64)
    box = merged["rlnImageSize"].to_numpy(np.float64).astype(np.uint32)
    fields: dict[str, np.ndarray] = {
        "uid": stable_uids(merged["rlnImageName"]),
        "blob/path": paths,
        "blob/idx": idx,
        "blob/shape": np.stack([box, box], axis=1),
        "blob/psize_A": px.astype(np.float32),
        "blob/sign": np.full(n, blob_sign, np.float32),
        **_ctf_fields(merged, n),
    }
    if (
        micrograph_shapes is not None
        and "rlnMicrographName" in merged.columns
        and "rlnCoordinateX" in merged.columns
    ):
        fields.update(_location_fields(source, merged, micrograph_shapes))
    if "rlnAutopickFigureOfMerit" in merged.columns:
        fields["pick_stats/ncc_score"] = _column(merged, "rlnAutopickFigureOfMerit", 0)
    if alignments2d is not None:
        _require(source, alignments2d, ("rlnImageName", "rlnClassNumber"), "2D data")
        columns = [
            c
            for c in (
                "rlnImageName",
                "rlnClassNumber",
                "rlnAnglePsi",
                "rlnOriginXAngst",
                "rlnOriginYAngst",
                "rlnMaxValueProbDistribution",
            )
            if c in alignments2d.columns
        ]
        aligned = merged[["rlnImageName"]].merge(
            alignments2d[columns].drop_duplicates("rlnImageName"),
            on="rlnImageName",
            how="left",
        )
        classified = aligned["rlnClassNumber"].notna().to_numpy()
        fields.update(_alignments2d_fields(aligned.fillna(0.0), px, classified))
    if {"rlnAngleRot", "rlnAngleTilt"} <= set(merged.columns):
        fields.update(_alignments3d_fields(merged, px))
    return Dataset(fields)


def exposures_to_dataset(
    optics: Any,
    micrographs: Any,
    *,
    source: str | Path,
    micrograph_shapes: Mapping[str, tuple[int, int]],
) -> Dataset:
    """A cryoSPARC exposure dataset from RELION's ``micrographs_ctf.star`` blocks:
    ``uid`` (hash of ``rlnMicrographName``, what particles' ``micrograph_uid``
    holds), ``micrograph_blob/*``, ``ctf/*`` and ``mscope_params/*``."""
    _require(source, micrographs, ("rlnMicrographName",), "data_micrographs")
    _require(
        source,
        optics,
        ("rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration"),
        "data_optics",
    )
    table = micrographs.reset_index(drop=True)
    if "rlnOpticsGroup" not in table.columns:
        table = table.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
    shared = [c for c in optics.columns if c in table.columns and c != "rlnOpticsGroup"]
    merged = table.drop(columns=shared).merge(optics, on="rlnOpticsGroup", how="left")
    names = merged["rlnMicrographName"].astype(str)
    location = _location_fields(
        source,
        merged.assign(rlnCoordinateX=0.0, rlnCoordinateY=0.0),
        micrograph_shapes,
    )
    n = len(merged)
    ctf = _ctf_fields(merged, n)
    fields: dict[str, np.ndarray] = {
        "uid": stable_uids(names),
        "micrograph_blob/path": names.to_numpy(dtype=object),
        "micrograph_blob/idx": np.zeros(n, np.uint32),
        "micrograph_blob/shape": location["location/micrograph_shape"],
        "micrograph_blob/psize_A": location["location/micrograph_psize_A"],
        "mscope_params/accel_kv": ctf["ctf/accel_kv"],
        "mscope_params/cs_mm": ctf["ctf/cs_mm"],
        **ctf,
    }
    return Dataset(fields)


def _cs_column(dataset: Dataset, source: Any, name: str) -> np.ndarray:
    if name not in dataset.fields():
        raise StageInputError(source, name, None, "field missing from the .cs")
    return np.asarray(dataset[name])


def _optics_from_dataset(dataset: Dataset, source: Any) -> tuple[Any, np.ndarray]:
    """One optics group per distinct (exp_group_id, pixel size, box, kV, Cs, Q0)."""
    n = len(dataset)
    group = (
        np.asarray(dataset["ctf/exp_group_id"], np.float64)
        if "ctf/exp_group_id" in dataset.fields()
        else np.zeros(n)
    )
    shape = _cs_column(dataset, source, "blob/shape")
    keys = np.stack(
        [
            group,
            _cs_column(dataset, source, "blob/psize_A").astype(np.float64),
            shape[:, -1].astype(np.float64),
            _cs_column(dataset, source, "ctf/accel_kv").astype(np.float64),
            _cs_column(dataset, source, "ctf/cs_mm").astype(np.float64),
            _cs_column(dataset, source, "ctf/amp_contrast").astype(np.float64),
        ],
        axis=1,
    )
    settings, which = np.unique(keys, axis=0, return_inverse=True)
    numbers = np.arange(1, len(settings) + 1)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": [f"opticsGroup{i}" for i in numbers],
            "rlnOpticsGroup": numbers,
            "rlnVoltage": settings[:, 3],
            "rlnSphericalAberration": settings[:, 4],
            "rlnAmplitudeContrast": settings[:, 5],
            "rlnImagePixelSize": settings[:, 1],
            "rlnImageSize": settings[:, 2].astype(np.int64),
            "rlnImageDimensionality": np.full(len(settings), 2),
            "rlnCtfDataAreCtfPremultiplied": np.zeros(len(settings), np.int64),
        }
    )
    return optics, numbers[which.ravel()]


def _poses_from_dataset(dataset: Dataset, fields: list[str]) -> dict[str, Any]:
    """RELION pose columns from ``alignments3D/*``, else ``alignments2D/*``."""
    out: dict[str, Any] = {}
    for prefix in ("alignments3D", "alignments2D"):
        if f"{prefix}/pose" not in fields:
            continue
        pose = np.asarray(dataset[f"{prefix}/pose"], np.float64)
        if prefix == "alignments3D":
            angles = rotvec_to_euler(pose.reshape(-1, 3))
            out["rlnAngleRot"], out["rlnAngleTilt"] = angles[:, 0], angles[:, 1]
            out["rlnAnglePsi"] = angles[:, 2]
        else:
            out["rlnAnglePsi"] = np.rad2deg(pose.reshape(-1))
        if f"{prefix}/shift" in fields:
            shift = np.asarray(dataset[f"{prefix}/shift"], np.float64)
            psize_field = f"{prefix}/psize_A"
            if psize_field not in fields:
                psize_field = "blob/psize_A"  # shifts at the image's pixel size
            psize = np.asarray(dataset[psize_field], np.float64)
            out["rlnOriginXAngst"] = shift[:, 0] * psize
            out["rlnOriginYAngst"] = shift[:, 1] * psize
        if f"{prefix}/class" in fields:
            out["rlnClassNumber"] = np.asarray(dataset[f"{prefix}/class"]) + 1
        split = (
            np.asarray(dataset[f"{prefix}/split"])
            if prefix == "alignments3D" and f"{prefix}/split" in fields
            else None
        )
        if split is not None and len(np.unique(split)) == 2:
            out["rlnRandomSubset"] = split.astype(np.int64) + 1
        return out
    return out


def dataset_to_particles(dataset: Dataset, *, source: str | Path) -> tuple[Any, Any]:
    """RELION ``(optics, particles)`` tables from a cryoSPARC particle dataset.

    Needs ``blob/*`` and the CTF (``ctf/accel_kv``, ``cs_mm``, ``amp_contrast``,
    ``df1_A``, ``df2_A``, ``df_angle_rad``); a missing one is a
    :class:`StageInputError` naming the file and field.  Optional fields: phase
    shift, B-factor and scale (RELION's defaults 0, 0, 1), ``location/*``
    (``rlnMicrographName``, ``rlnCoordinateX/Y``), ``pick_stats/ncc_score``
    (``rlnAutopickFigureOfMerit``) and poses (``alignments3D`` first, else
    ``alignments2D``).  ``rlnRandomSubset`` comes from ``alignments3D/split`` when
    it holds both halves.
    """
    fields = dataset.fields()
    for name in _REQUIRED_CS:
        _cs_column(dataset, source, name)
    optics, group = _optics_from_dataset(dataset, source)
    index = np.asarray(dataset["blob/idx"], np.int64) + 1
    paths = pd.Series(np.asarray(dataset["blob/path"], dtype=object)).astype(str)
    names = pd.Series(index).astype(str).str.zfill(6) + "@" + paths
    table: dict[str, Any] = {"rlnImageName": names.to_numpy(dtype=object)}
    if "location/micrograph_path" in fields:
        shape = np.asarray(dataset["location/micrograph_shape"], np.float64)
        table["rlnMicrographName"] = np.asarray(
            dataset["location/micrograph_path"], dtype=object
        )
        table["rlnCoordinateX"] = (
            np.asarray(dataset["location/center_x_frac"], np.float64) * shape[:, 1]
        )
        table["rlnCoordinateY"] = (
            np.asarray(dataset["location/center_y_frac"], np.float64) * shape[:, 0]
        )
    if "pick_stats/ncc_score" in fields:
        table["rlnAutopickFigureOfMerit"] = np.asarray(
            dataset["pick_stats/ncc_score"], np.float64
        )
    table["rlnOpticsGroup"] = group
    table["rlnDefocusU"] = np.asarray(dataset["ctf/df1_A"], np.float64)
    table["rlnDefocusV"] = np.asarray(dataset["ctf/df2_A"], np.float64)
    table["rlnDefocusAngle"] = np.rad2deg(
        np.asarray(dataset["ctf/df_angle_rad"], np.float64)
    )
    optional = {
        "ctf/phase_shift_rad": ("rlnPhaseShift", np.rad2deg),
        "ctf/bfactor": ("rlnCtfBfactor", None),
        "ctf/scale": ("rlnCtfScalefactor", None),
    }
    for field, (label, convert) in optional.items():
        if field in fields:
            values = np.asarray(dataset[field], np.float64)
            table[label] = convert(values) if convert is not None else values
    table.update(_poses_from_dataset(dataset, fields))
    return optics, pd.DataFrame(table)
