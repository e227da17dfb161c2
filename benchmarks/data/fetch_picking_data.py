"""Fetch the real, labelled micrographs of the picking benchmark into a cache folder.

    .venv/bin/python benchmarks/data/fetch_picking_data.py [--cache DIR] [--mirror GITDIR]

Nothing here is committed to the repository: the micrographs and their labels go to
``--cache`` (default ``~/.cache/livestream/picking``), where
``benchmarks/bench_pick_real.py`` reads them.  Sources, commits and licences are in
``benchmarks/data/PROVENANCE.md``.

CryoPPP EMPIAR-10947 (Dhakal et al. 2023): the 10 micrographs of the public copy in
``yangyang-69/Prompt_sam_cryoPPP`` at commit ``5f7cca15`` (the folder was deleted in a
later commit), 1024 x 1024 8-bit PNG, with 256 x 256 ground-truth particle masks (one
disc per labelled particle, merged where the discs overlap; the discs are 60 px
across, about three times the particles, see ``CRYOPPP_10947_DIAMETER_RANGE_A``).  EMPIAR-10028 and -10059 of
the same copy are kept for independent checks and are never fetched.  Files come from
``raw.githubusercontent.com`` or, with ``--mirror``, from a local git mirror of the
repository (``git show``).

CryoSegNet's EMPIAR-10017 fine-tuning set (``jianlin-cheng/CryoSegNet`` at commit
``b83260c8``): 20 micrographs of beta-galactosidase (Falcon II, 4096 x 4096,
1.77 Å/px), as 8-bit JPEGs that CryoSegNet had already denoised (Gaussian blur,
non-local means, Wiener filter, CLAHE, guided filter), with 4096 x 4096 JPEG masks
(one disc of 108 px per particle) and, for one micrograph, the coordinates themselves
(``csv_files/Falcon_2012_06_12-14_33_35_0.csv``, 629 particles).  That micrograph's
labels are the CSV; the other 19 are recovered from their masks (binned 8x, the same
disc cover).  Every file is checked against ``cryosegnet_10017.sha256``.

Masks to coordinates: the discs of touching particles merge, so the centres are
recovered by a greedy disc cover.  A candidate centre is a pixel whose disc (radius
``LABEL_RADIUS_PX`` in the mask's pixels) lies at least 90 % inside the mask; the
candidate whose disc covers the most not-yet-covered mask pixels is taken, its disc
marked covered, until no candidate adds half a disc.  Isolated discs are recovered
exactly; inside large merged clusters the decomposition is one of several that fit
the mask (the benchmark says so).  Centres are written in the 1024-px micrograph's
pixels (mask pixel ``i`` covers micrograph pixels ``4i .. 4i + 3``) to
``<split>/coordinates/<stem>.csv`` (``x_px,y_px``).

Ours: ``../shared/data/real/epu2.9_example_crop2048.mrc`` (a real Falcon micrograph,
float MRC, 0.6666 Å/px, 300 kV; the central crop of mrcfile's test micrograph) with
the 255 particles we labelled by eye (``epu29_crop2048_labels.csv`` beside this
script, CC0; how they were made and checked: PROVENANCE.md).  Copied from the shared
data folder (``LIVESTREAM_SHARED_DATA``, else ``../shared/data`` beside the checkout),
checked against its SHA-256; the manifest entry carries the optics, so that the
benchmark estimates the micrograph's CTF (``pipelines/ctf``) and picks with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image

CRYOPPP_REPO = "yangyang-69/Prompt_sam_cryoPPP"
CRYOPPP_COMMIT = "5f7cca15a294b95cffaff2cb6412fa0afcdc489d"
CRYOPPP_10947 = {
    "train": [
        "FoilHole_15960849_Data_15972821_15972823_20211215_174903_EER_10947",
        "FoilHole_15960850_Data_15972812_15972814_20211215_175058_EER_10947",
        "FoilHole_15960850_Data_15972821_15972823_20211215_175108_EER_10947",
        "FoilHole_15960851_Data_15972812_15972814_20211215_175436_EER_10947",
    ],
    "valid": ["FoilHole_15960851_Data_15972821_15972823_20211215_175446_EER_10947"],
    "test": [
        "FoilHole_15962085_Data_15972812_15972814_20211215_190249_EER_10947",
        "FoilHole_15962086_Data_15972803_15972805_20211215_190349_EER_10947",
        "FoilHole_15962086_Data_15972812_15972814_20211215_190329_EER_10947",
        "FoilHole_15962086_Data_15972821_15972823_20211215_190339_EER_10947",
        "FoilHole_15962087_Data_15972812_15972814_20211215_190400_EER_10947",
    ],
}
# The micrographs carry no pixel size and the copy does not say what the specimen is.
# 5.4 Å/px is a nominal figure (the first version took it from another data set); only
# diameter / pixel matters to a picker without a CTF, so the diameter below is the
# one measured in these pixels, converted at this nominal size.
CRYOPPP_10947_PIXEL_A = 5.4
# Measured, not taken from the masks: the label-centred average of the 2156 labels
# has a dark core about 18 px across (``bench_pick_real.py --check-labels``); the
# labels lie almost on a lattice (nearest-neighbour spacing 5th percentile 32 px,
# median 46 px), so the whole particle is at most about 45 px; 24 px (130 Å at the
# nominal pixel) is taken as the particle, 100-170 Å (18.5-31.5 px) as the picking
# range (at 170-250 Å the blob picker's label-tuned F1 is no better).  The masks' discs (60 px)
# are a drawing radius three times the particle: they overlap where the particles
# do not, so they are no particle size (the first version of this benchmark used
# them and asked the pickers for 250-350 Å objects, which are not there).
CRYOPPP_10947_DIAMETER_RANGE_A = (100.0, 170.0)
CRYOPPP_10947_PARTICLE_PX = 24.0
LABEL_RADIUS_PX = 7.5  # the masks' disc radius, in mask pixels (60 px at 1024)
MASK_BIN = 4  # 1024-px micrograph / 256-px mask


# CryoSegNet (Gyawali et al. 2024), MIT licence; EMPIAR-10017 (beta-galactosidase,
# Falcon II, 1.77 Å/px; the micrographs' names are the archive's).
CRYOSEGNET_REPO = "jianlin-cheng/CryoSegNet"
CRYOSEGNET_COMMIT = "b83260c81ebda2da8d3ac1d28df02097f7ea377a"
CRYOSEGNET_10017_PIXEL_A = 1.77
CRYOSEGNET_10017_PARTICLE_PX = 108.0  # the masks' and the CSV's diameter
# what a user would ask for beta-galactosidase (about 180 Å across at its widest)
CRYOSEGNET_10017_DIAMETER_RANGE_A = (140.0, 200.0)
CRYOSEGNET_10017_WITH_CSV = "Falcon_2012_06_12-14_33_35_0"
CRYOSEGNET_MASK_BIN = 8
CHECKSUMS = Path(__file__).with_name("cryosegnet_10017.sha256")

# Ours (PROVENANCE.md): the shared real micrograph and our labels of it.
SHARED_DATA = Path(
    os.environ.get(
        "LIVESTREAM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data"
    )
)
EPU29_MICROGRAPH = "real/epu2.9_example_crop2048.mrc"
EPU29_SHA256 = "75626f3e7f547ad8fc03cb9b704f1fd6c32895b5836369d448cb82983624b86b"
EPU29_LABELS = Path(__file__).with_name("epu29_crop2048_labels.csv")
EPU29_PIXEL_A = 0.6666
# Measured on the micrograph, without the labels: the average of the boxes centred on
# the 100-700 darkest local minima of the phase-flipped micrograph (low-passed at
# 15 Å) has a dark core whose contrast crosses zero at a radius of 21 Å; 40 Å is
# taken as the particle (60 px), 30-50 Å as the picking range.
EPU29_DIAMETER_RANGE_A = (30.0, 50.0)
EPU29_PARTICLE_PX = 60.0
EPU29_OPTICS = {"voltage_kv": 300.0, "cs_mm": 2.7}  # EPU's; Cs of a Krios


def _read_source(
    path: str,
    mirrors: list[Path],
    repo: str = CRYOPPP_REPO,
    commit: str = CRYOPPP_COMMIT,
) -> bytes:
    """``path`` at ``commit`` from the first local git mirror that has the commit,
    else from ``raw.githubusercontent.com``."""
    for mirror in mirrors:
        has = subprocess.run(
            ["git", "-C", str(mirror), "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True,
        )
        if has.returncode == 0:
            return subprocess.run(
                ["git", "-C", str(mirror), "show", f"{commit}:{path}"],
                check=True,
                capture_output=True,
            ).stdout
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
    return data


def mask_centres(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``(n, 2)`` disc centres ``(x, y)`` that cover a union-of-discs ``mask``."""
    ny, nx = mask.shape
    y = np.minimum(np.arange(ny), ny - np.arange(ny))[:, None]
    x = np.minimum(np.arange(nx), nx - np.arange(nx))[None, :]
    disc = ((y * y + x * x) <= radius_px * radius_px).astype(np.float64)
    area = disc.sum()
    disc_ft = scipy.fft.rfft2(disc)

    def covered(image: np.ndarray) -> np.ndarray:
        spectrum = scipy.fft.rfft2(image.astype(np.float64)) * disc_ft
        return np.asarray(scipy.fft.irfft2(spectrum, s=image.shape))

    candidate = covered(mask) / area >= 0.9
    uncovered = mask.copy()
    rows, cols = np.mgrid[:ny, :nx]
    centres = []
    while True:
        gain = np.where(candidate, covered(uncovered), -1.0)
        best = int(np.argmax(gain))
        if gain.flat[best] < 0.5 * area:
            break
        cy, cx = divmod(best, nx)
        centres.append((cx, cy))
        uncovered &= (rows - cy) ** 2 + (cols - cx) ** 2 > radius_px * radius_px
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def fetch_cryoppp_10947(cache: Path, mirrors: list[Path]) -> list[dict[str, object]]:
    root = cache / "cryoppp_10947"
    entries: list[dict[str, object]] = []
    for split, stems in CRYOPPP_10947.items():
        for stem in stems:
            files = {}
            for kind in ("images", "labels"):
                target = root / split / kind / f"{stem}.png"
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = f"dataset/10947/{split}/{kind}/{stem}.png"
                    target.write_bytes(_read_source(source, mirrors))
                files[kind] = target
            mask = np.asarray(Image.open(files["labels"]).convert("L")) > 127
            centres = mask_centres(mask, LABEL_RADIUS_PX)
            centres = centres * MASK_BIN + (MASK_BIN - 1) / 2.0
            coords = root / split / "coordinates" / f"{stem}.csv"
            coords.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(coords, centres, fmt="%.1f", delimiter=",", header="x_px,y_px")
            entries.append(
                {
                    "dataset": "CryoPPP EMPIAR-10947",
                    "micrograph": str(files["images"].relative_to(cache)),
                    "coordinates": str(coords.relative_to(cache)),
                    "pixel_size_a": CRYOPPP_10947_PIXEL_A,
                    "diameter_range_a": list(CRYOPPP_10947_DIAMETER_RANGE_A),
                    "particle_diameter_px": CRYOPPP_10947_PARTICLE_PX,
                }
            )
            print(f"{split}/{stem}: {len(centres)} labelled particles")
    return entries


def fetch_cryosegnet_10017(cache: Path, mirrors: list[Path]) -> list[dict[str, object]]:
    root = cache / "cryosegnet_10017"
    sums = dict(
        reversed(line.split()) for line in CHECKSUMS.read_text().splitlines() if line
    )
    stems = sorted(
        Path(p).name[: -len(".jpg")]
        for p in sums
        if p.startswith("finetune_dataset/images/")
    )
    entries: list[dict[str, object]] = []
    for stem in stems:
        sources = {
            "image": f"finetune_dataset/images/{stem}.jpg",
            "mask": f"finetune_dataset/masks/{stem}_mask.jpg",
        }
        if stem == CRYOSEGNET_10017_WITH_CSV:
            sources["csv"] = f"finetune_dataset/csv_files/{stem}.csv"
        files = {}
        for kind, source in sources.items():
            target = root / source.removeprefix("finetune_dataset/")
            if not target.exists():
                data = _read_source(source, mirrors, CRYOSEGNET_REPO, CRYOSEGNET_COMMIT)
                digest = hashlib.sha256(data).hexdigest()
                if digest != sums[source]:
                    raise SystemExit(f"{source}: sha256 {digest} != {sums[source]}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            files[kind] = target
        coords = root / "coordinates" / f"{stem}.csv"
        if "csv" in files:
            table = np.loadtxt(files["csv"], delimiter=",", skiprows=1, ndmin=2)
            centres = table[:, :2]
        else:
            mask = np.asarray(Image.open(files["mask"]).convert("L"), np.float32)
            b = CRYOSEGNET_MASK_BIN
            ny, nx = (s // b for s in mask.shape)
            binned = mask[: ny * b, : nx * b].reshape(ny, b, nx, b).mean(axis=(1, 3))
            radius = CRYOSEGNET_10017_PARTICLE_PX / 2 / b
            centres = mask_centres(binned > 127.5, radius) * b + (b - 1) / 2.0
        coords.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(coords, centres, fmt="%.1f", delimiter=",", header="x_px,y_px")
        entries.append(
            {
                "dataset": "CryoSegNet EMPIAR-10017",
                "micrograph": str(files["image"].relative_to(cache)),
                "coordinates": str(coords.relative_to(cache)),
                "pixel_size_a": CRYOSEGNET_10017_PIXEL_A,
                "diameter_range_a": list(CRYOSEGNET_10017_DIAMETER_RANGE_A),
                "particle_diameter_px": CRYOSEGNET_10017_PARTICLE_PX,
            }
        )
        print(f"{stem}: {len(centres)} labelled particles")
    return entries


def fetch_epu29_ours(cache: Path) -> list[dict[str, object]]:
    source = SHARED_DATA / EPU29_MICROGRAPH
    target = cache / "epu29_ours" / source.name
    if not target.exists():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if digest != EPU29_SHA256:
            raise SystemExit(f"{source}: sha256 {digest} != {EPU29_SHA256}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    coords = target.parent / "coordinates" / f"{target.stem}.csv"
    coords.parent.mkdir(parents=True, exist_ok=True)
    centres = np.loadtxt(EPU29_LABELS, delimiter=",", comments="#", ndmin=2)
    np.savetxt(coords, centres, fmt="%.1f", delimiter=",", header="x_px,y_px")
    print(f"{target.stem}: {len(centres)} labelled particles (ours)")
    return [
        {
            "dataset": "ours epu2.9 crop (float MRC, CTF)",
            "micrograph": str(target.relative_to(cache)),
            "coordinates": str(coords.relative_to(cache)),
            "pixel_size_a": EPU29_PIXEL_A,
            "diameter_range_a": list(EPU29_DIAMETER_RANGE_A),
            "particle_diameter_px": EPU29_PARTICLE_PX,
            "optics": EPU29_OPTICS,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/livestream/picking"
    )
    parser.add_argument(
        "--mirror",
        type=Path,
        action="append",
        default=[],
        help="local git mirror of a source repository (repeatable)",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    entries = fetch_cryoppp_10947(args.cache, args.mirror)
    entries += fetch_cryosegnet_10017(args.cache, args.mirror)
    entries += fetch_epu29_ours(args.cache)
    manifest = args.cache / "manifest.json"
    manifest.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"{len(entries)} micrographs, manifest {manifest}")


if __name__ == "__main__":
    main()
