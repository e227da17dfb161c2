"""`livestream pick` and `livestream extract` on files, through the dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.extract import _pick_records
from livestream.cli.main import main
from pipelines.io.outputs import write_mrc
from tests.pipelines.pick_synthetic import (
    make_phantom,
    match_picks,
    project_templates,
    simulate,
)


@pytest.fixture
def micrographs(tmp_path: Path, rng: np.random.Generator) -> tuple[list[Path], list]:
    phantom = make_phantom(rng, diameter_a=160.0)
    paths = []
    truths = []
    for i, defocus_a in enumerate((12000.0, 25000.0)):
        sim = simulate(
            rng, phantom=phantom, shape=(512, 640), snr=0.08, defocus_a=defocus_a
        )
        path = tmp_path / "MotionCorr" / "job002" / "Movies" / f"mic_{i}.mrc"
        write_mrc(path, sim.image, pixel_size_a=4.0, float16=False)
        paths.append(path)
        truths.append(sim)
    templates = project_templates(phantom, rng, n=6, box_px=64, pixel_size_a=4.0)
    write_mrc(tmp_path / "templates.mrcs", templates, pixel_size_a=4.0, float16=False)
    return paths, truths


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict]:
    """The items of the one JSON object the command prints."""
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["failed"] == []
    return document["items"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("picker", ["blob", "template", "learned"])
def test_pick_json_finds_the_particles(
    micrographs: tuple[list[Path], list],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    picker: str,
) -> None:
    paths, truths = micrographs
    argv = [
        "pick",
        *map(str, paths),
        "--pixel-size-a",
        "4",
        "--diameter-a",
        "130",
        "190",
    ]
    if picker == "template":
        argv += ["--templates", str(tmp_path / "templates.mrcs")]
        argv += ["--defocus-a", "15000", "15000", "0"]
    if picker == "learned":  # one model for both micrographs
        argv += ["--learned"]
    records = _run_json([*argv, "--json"], capsys)
    assert [r["micrograph"] for r in records] == [str(p) for p in paths]
    for record, truth in zip(records, truths, strict=True):
        assert record["picker"] == picker
        assert record["n_picks"] == len(record["picks"])
        x = np.array([p["x_px"] for p in record["picks"]])
        y = np.array([p["y_px"] for p in record["picks"]])
        recall, precision = match_picks(
            truth.x_px, truth.y_px, x, y, tolerance_px=0.2 * 160 / 4
        )
        assert recall >= 0.9
        assert precision >= 0.9
        assert {"x_px", "y_px", "score", "power"} <= set(record["picks"][0])


def test_pick_learned_refuses_a_fixed_threshold(
    micrographs: tuple[list[Path], list], capsys: pytest.CaptureFixture[str]
) -> None:
    paths, _ = micrographs
    argv = ["pick", str(paths[0]), "--pixel-size-a", "4", "--diameter-a", "130", "190"]
    assert main([*argv, "--learned", "--threshold-sd", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "livestream pick: --learned cannot be combined with --threshold-sd"
    )


def test_pick_template_whitening_out_of_range_names_the_argument(
    micrographs: tuple[list[Path], list],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, _ = micrographs
    argv = ["pick", str(paths[0]), "--pixel-size-a", "4", "--diameter-a", "130", "190"]
    argv += ["--templates", str(tmp_path / "templates.mrcs")]
    assert main([*argv, "--template-score", "ncc", "--template-whitening", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "livestream pick: --template-whitening has value 2.0: need 0 to 1"
    )


def test_pick_then_extract(
    micrographs: tuple[list[Path], list],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, _ = micrographs
    picks_file = tmp_path / "picks.json"
    common = ["--pixel-size-a", "4", "--diameter-a", "130", "190"]
    assert main(["pick", *map(str, paths), *common, "--json"]) == 0
    picks_file.write_text(capsys.readouterr().out)
    assert (
        main(["pick", str(paths[0]), *common, "--out", str(tmp_path / "AutoPick")]) == 0
    )
    capsys.readouterr()
    star_picks = starfile.read(tmp_path / "AutoPick" / "mic_0_autopick.star")
    assert "rlnCoordinateX" in star_picks

    argv = [
        "extract", *map(str, paths), "--picks", str(picks_file),
        "--pixel-size-a", "4", "--box-px", "64", "--downscale-px", "48",
        "--defocus-a", "15000", "14000", "10",
        "--out", "Extract/job005", "--project-dir", str(tmp_path), "--json",
    ]  # fmt: skip
    records = _run_json(argv, capsys)
    total = 0
    for record in records:
        with mrcfile.open(record["stack"]) as mrc:
            assert mrc.header.mode == 12
            assert mrc.data.shape[1:] == (48, 48)
            assert mrc.data.shape[0] == record["n_extracted"]
        total += record["n_extracted"]
    blocks = starfile.read(tmp_path / "Extract" / "job005" / "particles.star")
    assert len(blocks["particles"]) == total
    assert blocks["particles"]["rlnImageName"].iloc[0] == (
        "000001@Extract/job005/Movies/mic_0.mrcs"
    )
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(4.0 * 64 / 48)


def test_extract_without_picks_for_a_micrograph_fails_cleanly(
    micrographs: tuple[list[Path], list],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, _ = micrographs
    (tmp_path / "other_autopick.star").write_text("data_\n")
    argv = [
        "extract", str(paths[0]), "--picks", str(tmp_path / "other_autopick.star"),
        "--pixel-size-a", "4", "--box-px", "64", "--defocus-a", "1e4", "1e4", "0",
        "--out", str(tmp_path / "Extract"),
    ]  # fmt: skip
    assert main(argv) == 1
    assert "mic_0" in capsys.readouterr().err


def test_extract_reads_picks_json_of_older_versions_and_names_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [
        {"micrograph": "a.mrc", "picks": []},
        {"micrograph": "mic.mrc", "picks": [{"x_px": 32.0, "y_px": 32.0}]},
    ]
    now = tmp_path / "picks.json"
    now.write_text(json.dumps({"items": items, "failed": []}))
    older = tmp_path / "picks.jsonl"  # one object per line (older versions)
    older.write_text("".join(json.dumps(item) + "\n" for item in items))
    assert _pick_records(now) == _pick_records(older) == items

    micrograph = tmp_path / "mic.mrc"
    write_mrc(micrograph, np.zeros((64, 64), np.float32), pixel_size_a=4.0)
    broken = tmp_path / "broken.json"
    broken.write_text('{"items": [')
    argv = [
        "extract", str(micrograph), "--picks", str(now), str(broken),
        "--pixel-size-a", "4", "--box-px", "16", "--defocus-a", "1e4", "1e4", "0",
        "--out", str(tmp_path / "E"),
    ]  # fmt: skip
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"livestream extract: {broken}: picks file is not JSON")
    assert not (tmp_path / "E").exists()  # checked before the first micrograph
