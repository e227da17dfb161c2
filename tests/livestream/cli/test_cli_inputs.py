"""A missing or unreadable input is one line on stderr naming it, and exit status 2.

Every command is run through ``livestream.cli.main.main`` with a path that does not
exist, is a folder where a file is expected (or a file where a folder is), is a
FIFO (which would block a reader forever) or is a broken symbolic link; the rest of
its command line is valid.  We run as root, so permissions cannot make a file
unreadable: the FIFO and the broken link stand in for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from livestream.cli.main import main
from tests.livestream.service_fixtures import service_config, write_config_file

FILE_KINDS = ("missing", "folder", "fifo", "broken_link")
FOLDER_KINDS = ("missing", "file", "fifo", "broken_link")
# an empty file is an empty SQLite database: curate (which writes) makes it a ledger
LEDGER_KINDS = {
    "status": (*FILE_KINDS, "empty", "not_sqlite"),
    "curate": (*FILE_KINDS, "not_sqlite"),
    "refine-now": FILE_KINDS,  # it only checks that the project is a service's
}
OPTICS = ["--pixel-size-a", "1", "--voltage-kv", "300", "--cs-mm", "2.7"]
PICK = ["--pixel-size-a", "1", "--diameter-a", "100", "200"]


def _make_bad(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("a file, not a folder")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "broken_link":
        path.symlink_to(path.parent / "gone")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_sqlite":
        path.write_text("not an SQLite database\n" * 100)
    return path


def _good_file(folder: Path, name: str) -> str:
    """A readable file (never parsed: the input check comes first)."""
    path = folder / name
    path.write_bytes(b"\0" * 16)
    return str(path)


def _project(folder: Path) -> str:
    """A project folder with a (never opened) ledger file."""
    project = folder / "project"
    project.mkdir()
    (project / "livestream.sqlite").write_bytes(b"")
    return str(project)


def _curate_config(project: Path, folder: Path) -> str:
    """A valid config with a curate stage."""
    config = service_config(
        folder / "session",
        folder / "movies",
        project,
        stages={"chain": ["motion", "ctf", "curate"]},
    )
    return str(write_config_file(folder / "live.toml", config))


# command, what is bad, argv given the bad path and a scratch folder
ArgvOf = Callable[[str, Path], list[str]]
FILE_CASES: dict[str, ArgvOf] = {
    "motion": lambda bad, tmp: ["motion", bad, "--out", str(tmp / "out")],
    "motion --gain": lambda bad, tmp: [
        "motion", _good_file(tmp, "movie.mrc"), "--out", str(tmp / "o"), "--gain", bad
    ],
    "ctf": lambda bad, tmp: ["ctf", bad, *OPTICS, "--json"],
    "pick": lambda bad, tmp: ["pick", bad, *PICK],
    "pick --learned": lambda bad, tmp: ["pick", bad, *PICK, "--learned"],
    "pick --templates": lambda bad, tmp: [
        "pick", _good_file(tmp, "mic.mrc"), *PICK, "--templates", bad
    ],
    "extract": lambda bad, tmp: [
        "extract", bad, "--picks", _good_file(tmp, "picks.json"),
        "--pixel-size-a", "1", "--box-px", "64", "--out", str(tmp / "Extract"),
    ],
    "extract --picks": lambda bad, tmp: [
        "extract", _good_file(tmp, "mic.mrc"), "--picks", bad,
        "--pixel-size-a", "1", "--box-px", "64", "--out", str(tmp / "Extract"),
    ],
    "extract --ctf-star": lambda bad, tmp: [
        "extract", _good_file(tmp, "mic.mrc"), "--picks",
        _good_file(tmp, "picks.json"), "--pixel-size-a", "1", "--box-px", "64",
        "--out", str(tmp / "Extract"), "--ctf-star", bad,
    ],
    "class2d": lambda bad, tmp: [
        "class2d", bad, "--classes", "2", "--out", str(tmp / "Class2D")
    ],
    "curate --config": lambda bad, tmp: [
        "curate", "--project", _project(tmp), "--config", bad
    ],
    "run --config": lambda bad, tmp: ["run", "--config", bad],
    "reconstruct": lambda bad, tmp: ["reconstruct", bad, "--out", str(tmp / "R")],
    "mask": lambda bad, tmp: ["mask", bad, "--out", str(tmp / "m.mrc"), "--auto"],
    "postprocess": lambda bad, tmp: [
        "postprocess", bad, _good_file(tmp, "h2.mrc"), "--mask", _good_file(tmp, "m.mrc")
    ],
    "postprocess --mask": lambda bad, tmp: [
        "postprocess", _good_file(tmp, "h1.mrc"), _good_file(tmp, "h2.mrc"), "--mask", bad
    ],
    "postprocess --mtf": lambda bad, tmp: [
        "postprocess", _good_file(tmp, "h1.mrc"), _good_file(tmp, "h2.mrc"),
        "--mask", _good_file(tmp, "m.mrc"), "--mtf", bad,
    ],
    "rebalance": lambda bad, tmp: ["rebalance", bad, "--out", str(tmp / "Rb")],
    "import-cryosparc": lambda bad, tmp: [
        "import-cryosparc", bad, "--out", str(tmp / "p.star")
    ],
    "star downgrade": lambda bad, tmp: ["star", "downgrade", bad, "--out", str(tmp / "o.star")],
    "star from-dynamo": lambda bad, tmp: [
        "star", "from-dynamo", bad, "--pixel-size-a", "1", "--out", str(tmp / "o.star")
    ],
    "star subset": lambda bad, tmp: [
        "star", "subset", bad, "--n", "2", "--out", str(tmp / "o.star")
    ],
    "star split-halves": lambda bad, tmp: [
        "star", "split-halves", bad, "--out", str(tmp / "o.star")
    ],
    "slurm-script --config": lambda bad, tmp: ["slurm-script", "--config", bad],
    "initial-model": lambda bad, tmp: [
        "initial-model", bad, "--classes", "1", "--out", str(tmp / "IM")
    ],
    "initial-model --classes 2": lambda bad, tmp: [
        "initial-model", bad, "--classes", "2", "--starts", "2",
        "--class-iterations", "3", "--out", str(tmp / "IM"),
    ],
    "class3d": lambda bad, tmp: [
        "class3d", bad, "--refs", _good_file(tmp, "ref.mrc"), "--out", str(tmp / "C3")
    ],
    "class3d --refs": lambda bad, tmp: [
        "class3d", _good_file(tmp, "p.star"), "--refs", bad, "--out", str(tmp / "C3")
    ],
    "plan3d": lambda bad, tmp: ["plan3d", bad, "--out", str(tmp / "P3")],
    "refine3d": lambda bad, tmp: [
        "refine3d", bad, "--ref", _good_file(tmp, "ref.mrc"), "--out", str(tmp / "R")
    ],
    "refine3d --ref": lambda bad, tmp: [
        "refine3d", _good_file(tmp, "p.star"), "--ref", bad, "--out", str(tmp / "R")
    ],
}  # fmt: skip
LEDGER_CASES: dict[str, Callable[[Path, Path], list[str]]] = {
    "status": lambda project, tmp: ["status", "--project", str(project)],
    "refine-now": lambda project, tmp: ["refine-now", str(project)],
    "curate": lambda project, tmp: [
        "curate", "--project", str(project), "--config", _curate_config(project, tmp)
    ],
}  # fmt: skip
FOLDER_CASES: dict[str, ArgvOf] = {
    "status --project": lambda bad, tmp: ["status", "--project", bad],
    "curate --project": lambda bad, tmp: [
        "curate", "--project", bad, "--config", _good_file(tmp, "live.toml")
    ],
    "run --session": lambda bad, tmp: ["run", "--session", bad],
    "refine-now PROJECT": lambda bad, tmp: ["refine-now", bad],
    "export-cryosparc": lambda bad, tmp: [
        "export-cryosparc", bad, "--out", str(tmp / "cs")
    ],
}  # fmt: skip


def _assert_one_line_naming(
    argv: list[str], bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    assert line.startswith(f"livestream {argv[0]}: {bad}: "), line


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_input_file(
    case: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _make_bad(tmp_path / "inputs" / "bad.input", kind)
    _assert_one_line_naming(FILE_CASES[case](str(bad), tmp_path), bad, capsys)


@pytest.mark.parametrize(
    ("case", "kind"),
    [(case, kind) for case, kinds in LEDGER_KINDS.items() for kind in kinds],
)
def test_bad_ledger(
    case: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    bad = _make_bad(project / "livestream.sqlite", kind)
    _assert_one_line_naming(LEDGER_CASES[case](project, tmp_path), bad, capsys)


@pytest.mark.parametrize("kind", FOLDER_KINDS)
@pytest.mark.parametrize("case", FOLDER_CASES)
def test_bad_input_folder(
    case: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _make_bad(tmp_path / "inputs" / "bad_folder", kind)
    _assert_one_line_naming(FOLDER_CASES[case](str(bad), tmp_path), bad, capsys)


def test_every_command_that_reads_inputs_is_covered() -> None:
    from livestream.cli.main import COMMANDS

    cases = [*FILE_CASES, *LEDGER_CASES, *FOLDER_CASES]
    covered = {case.split()[0] for case in cases}
    assert covered == set(COMMANDS) - {"demo"}  # the demo makes its own inputs


def test_missing_particles_star_as_a_process(tmp_path: Path) -> None:
    """The case of the issue: ``livestream class2d /missing.star`` printed a
    traceback."""
    missing = tmp_path / "missing.star"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "livestream.cli.main", "class2d", str(missing)),
            *("--classes", "2", "--out", str(tmp_path / "Class2D")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        result.stderr
        == f"livestream class2d: {missing}: particles STAR does not exist\n"
    )
