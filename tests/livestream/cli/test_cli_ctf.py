"""``livestream ctf``: in-process through ``livestream.cli.main.main`` and as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from livestream.cli.main import main
from pipelines.ctf.model import CtfParams
from pipelines.simulate.thon import make_thon_micrograph
from tests.livestream.cli.terminal import FakeTerminal

OPTICS = ["--pixel-size-a", "1.0", "--voltage-kv", "300", "--cs-mm", "2.7"]


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mics")
    rng = np.random.default_rng(8)
    paths = []
    for i, mean in enumerate((12000.0, 22000.0)):
        truth = CtfParams(
            defocus_u_a=mean + 200.0, defocus_v_a=mean - 200.0, bfactor_a2=40.0
        )
        image = make_thon_micrograph(truth, shape=(768, 768), contrast=0.1, rng=rng)
        path = folder / f"mic_{i}.mrc"
        mrcfile.write(path, image, voxel_size=1.0)
        paths.append(path)
    return paths


def test_json_object_in_process(
    micrographs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ctf", *map(str, micrographs), *OPTICS, "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)  # exactly one JSON value
    assert document["failed"] == []
    assert len(document["items"]) == 2
    for record, mean in zip(document["items"], (12000.0, 22000.0), strict=True):
        for key in (
            "defocus_u_a",
            "defocus_v_a",
            "astigmatism_angle_deg",
            "phase_shift_deg",
            "fit_resolution_a",
            "figure_of_merit",
        ):
            assert isinstance(record[key], float)
        found = 0.5 * (record["defocus_u_a"] + record["defocus_v_a"])
        assert found == pytest.approx(mean, rel=0.01)


def test_out_folder_gets_diagnostics_and_star(
    micrographs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "CtfFind" / "job003"
    code = main(["ctf", str(micrographs[0]), *OPTICS, "--out", str(out)])
    assert code == 0
    assert "U " in capsys.readouterr().out
    assert (out / "mic_0.ctf").exists()
    assert (out / "mic_0_ctf.png").exists()
    table = starfile.read(out / "micrographs_ctf.star", always_dict=True)
    assert table["micrographs"]["rlnCtfImage"].tolist() == ["mic_0.ctf:mrc"]


def test_bad_file_fails_with_its_name_and_others_still_run(
    micrographs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "nope.mrc"
    bad.write_text("not an MRC file")
    code = main(["ctf", str(bad), str(micrographs[0]), *OPTICS, "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "nope.mrc" in captured.err
    document = json.loads(captured.out)
    assert [item["micrograph_path"] for item in document["items"]] == [
        str(micrographs[0])
    ]
    [failure] = document["failed"]
    assert failure["path"] == str(bad)
    assert "nope.mrc" in failure["error"]


def test_subprocess_json(micrographs: list[Path]) -> None:
    command = [sys.executable, "-m", "livestream.cli.main", "ctf", str(micrographs[1])]
    result = subprocess.run(
        [*command, *OPTICS, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    [record] = json.loads(result.stdout)["items"]
    assert record["micrograph_path"] == str(micrographs[1])
    found = 0.5 * (record["defocus_u_a"] + record["defocus_v_a"])
    assert found == pytest.approx(22000.0, rel=0.01)


def test_progress_on_a_terminal_but_not_with_json(
    micrographs: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["ctf", *map(str, micrographs), *OPTICS]) == 0
    assert "2/2" in terminal.getvalue()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(map(str, micrographs))

    terminal.seek(0)
    terminal.truncate()
    assert main(["ctf", *map(str, micrographs), *OPTICS, "--json"]) == 0
    assert terminal.getvalue() == ""
    assert len(json.loads(capsys.readouterr().out)["items"]) == 2
