"""The watcher: network mounts, rescans, and files settling in either order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from livestream.config import SessionConfig
from livestream.intake.settle import FileKind, FileSignature
from livestream.intake.watcher import SessionWatcher, is_network_mount, scan_files

MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
//scope-pc/EPU /mnt/epu cifs rw,vers=3.0 0 0
server:/export /mnt/nfs nfs4 rw 0 0
me@host:/data /mnt/ssh\\040share fuse.sshfs rw 0 0
/dev/sdb1 /mnt/epu/local ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "network"),
    [
        ("/mnt/epu/session", True),
        ("/mnt/nfs", True),
        ("/mnt/ssh share/x", True),
        ("/mnt/epu/local/x", False),  # the longest mount prefix decides
        ("/mnt/epusession", False),
        ("/home/user", False),
    ],
)
def test_network_mounts_are_recognised(path: str, network: bool) -> None:
    assert is_network_mount(Path(path), MOUNTS) is network


def test_rescan_lists_every_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.xml").write_text("x")
    (tmp_path / "y.mrc").write_text("y")
    found = scan_files([tmp_path, tmp_path / "missing"])
    assert sorted(p.name for p in found) == ["x.xml", "y.mrc"]


@pytest.mark.parametrize("polling", ["false", "true"])
async def test_files_settle_once_whatever_the_order(
    tmp_path: Path, polling: str
) -> None:
    session, movies = tmp_path / "session", tmp_path / "movies"
    session.mkdir()
    movies.mkdir()
    config = SessionConfig(
        path=session,
        movie_roots=(movies,),
        settle_time_s=0.2,
        rescan_interval_s=0.3,
        polling_interval_s=0.1,
        polling=polling,  # type: ignore[arg-type]
    )
    seen: list[tuple[Path, FileKind, FileSignature]] = []
    done = asyncio.Event()

    def on_settled(path: Path, kind: FileKind, signature: FileSignature) -> None:
        seen.append((path, kind, signature))
        if len(seen) >= 2:
            done.set()

    watcher = SessionWatcher(config, on_settled)
    task = asyncio.create_task(watcher.run())
    await asyncio.sleep(0.2)
    stem = "FoilHole_1_Data_2_3_20200320_090200"
    movie = movies / "Images-Disc1" / f"{stem}_Fractions.mrc"
    movie.parent.mkdir(parents=True)
    with open(movie, "wb") as fh:  # grows in two steps
        fh.write(b"a" * 100)
        fh.flush()
        await asyncio.sleep(0.1)
        fh.write(b"b" * 100)
    (session / ".tmp_name.xml").write_text("ignored")
    (session / f"{stem}.xml").write_text("<x/>")
    async with asyncio.timeout(10):
        await done.wait()
    await asyncio.sleep(0.8)  # further rescans must not report them again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kinds = sorted((p.name, k.value) for p, k, _ in seen)
    assert kinds == [(f"{stem}.xml", "epu_xml"), (f"{stem}_Fractions.mrc", "movie")]
    movie_signature = next(s for p, _, s in seen if p == movie)
    assert movie_signature.size_bytes == 200
