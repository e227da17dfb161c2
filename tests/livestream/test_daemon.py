"""The service end to end, in-process, on a small EPU session with noop stages."""

from __future__ import annotations

from pathlib import Path

from tests.livestream.service_fixtures import (
    ledger_rows,
    run_until_settled,
    service_config,
    write_session,
)


async def test_every_exposure_passes_every_stage_once(tmp_path: Path) -> None:
    session, movies, _ = write_session(tmp_path, 5)
    project = tmp_path / "project"
    config = service_config(session, movies, project)
    await run_until_settled(config, 5)
    rows = ledger_rows(project)
    assert len(rows) == 5 * 3
    assert {state for state, _, _ in rows.values()} == {"done"}
    assert all(
        attempts == 1
        for (_, stage), (_, attempts, _) in rows.items()
        if stage != "import"
    )
    outputs = sorted((project / "Noop").rglob("*.json"))
    assert len(outputs) == 10


async def test_bad_inputs_are_quarantined_with_a_reason_and_the_rest_processed(
    tmp_path: Path,
) -> None:
    session, movies, _ = write_session(tmp_path, 5)
    xmls = sorted(session.rglob("FoilHole_*.xml"))
    movie_files = sorted(movies.rglob("*_Fractions.mrc"))
    truncated = movie_files[0]
    truncated.write_bytes(truncated.read_bytes()[:3000])
    malformed = xmls[1]
    malformed.write_text(malformed.read_text()[:500])
    orphan_xml = xmls[2]
    orphan_xml.unlink()  # its movie has no metadata
    project = tmp_path / "project"
    await run_until_settled(service_config(session, movies, project), 5)
    rows = ledger_rows(project)
    stems = [m.name.removesuffix("_Fractions.mrc") for m in movie_files]
    reasons = {stem: rows[(stem, "import")] for stem in stems}
    assert reasons[stems[0]][0] == "quarantined"
    assert "truncated" in (reasons[stems[0]][2] or "")
    assert reasons[stems[1]][0] == "quarantined"
    assert malformed.name in (reasons[stems[1]][2] or "")
    assert reasons[stems[2]][0] == "quarantined"
    assert "no metadata" in (reasons[stems[2]][2] or "")
    for stem in stems[3:]:
        assert rows[(stem, "second")][0] == "done"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


async def test_a_read_only_session_is_processed_and_left_untouched(
    tmp_path: Path,
) -> None:
    session, movies, _ = write_session(tmp_path, 3)
    before = _tree(tmp_path / "session"), _tree(tmp_path / "movies")
    folders = [*session.rglob("*"), *movies.rglob("*"), session, movies]
    for path in folders:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        project = tmp_path / "project"
        await run_until_settled(service_config(session, movies, project), 3)
        assert (_tree(tmp_path / "session"), _tree(tmp_path / "movies")) == before
    finally:
        for path in folders:
            path.chmod(path.stat().st_mode | 0o200)
    assert {s for s, _, _ in ledger_rows(project).values()} == {"done"}


async def test_a_serialem_session_is_processed(tmp_path: Path) -> None:
    from mdcatch.records import Software

    session, movies, _ = write_session(tmp_path, 3, software=Software.SERIALEM)
    project = tmp_path / "project"
    config = service_config(session, movies, project, session={"software": "serialem"})
    await run_until_settled(config, 3)
    rows = ledger_rows(project)
    assert len(rows) == 9
    assert {s for s, _, _ in rows.values()} == {"done"}


async def test_a_restart_redoes_nothing(tmp_path: Path) -> None:
    session, movies, _ = write_session(tmp_path, 3)
    project = tmp_path / "project"
    config = service_config(session, movies, project)
    await run_until_settled(config, 3)
    first = ledger_rows(project)
    events = await run_until_settled(config, 3, timeout_s=3.0, expect_timeout=True)
    assert ledger_rows(project) == first
    assert not [e for e in events if e.stage in ("first", "second")]


async def test_metrics_scraped_over_http_agree_with_the_ledger(tmp_path: Path) -> None:
    import asyncio
    import urllib.request

    from livestream.daemon import ServiceHandle, run_service
    from livestream.telemetry.reporting import EventType, ServiceEvent

    session, movies, _ = write_session(tmp_path, 4)
    xml = sorted(session.rglob("FoilHole_*.xml"))[0]
    xml.write_text("<not-epu/>")  # one quarantined import
    project = tmp_path / "project"
    config = service_config(
        session, movies, project, metrics={"enabled": True, "port": 0}
    )
    handles: list[ServiceHandle] = []
    finals: set[str] = set()
    settled, stop = asyncio.Event(), asyncio.Event()

    def listen(event: ServiceEvent) -> None:
        if event.type in (EventType.EXPOSURE_DONE, EventType.IMPORT_QUARANTINED):
            finals.add(event.exposure_id)
            if len(finals) == 4:
                settled.set()

    service = asyncio.create_task(
        run_service(
            config,
            stop=stop,
            listeners=(listen,),
            on_started=handles.append,
            install_signal_handlers=False,
        )
    )
    async with asyncio.timeout(30):
        await settled.wait()
    address = handles[0].metrics_address
    assert address is not None
    url = f"http://{address[0]}:{address[1]}/metrics"
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=5).read().decode()
    )
    stop.set()
    assert await service == 0

    def sample(name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    rows = ledger_rows(project)
    n_done = sum(
        1
        for (_, stage), (state, _, _) in rows.items()
        if stage == "second" and state == "done"
    )
    assert n_done == 3
    assert sample("livestream_exposures_done_total") == n_done
    assert sample("livestream_exposures_discovered_total") == len({e for e, _ in rows})
    assert sample('livestream_stage_exposures_total{stage="first",state="done"}') == 3
    assert (
        sample('livestream_stage_exposures_total{stage="import",state="quarantined"}')
        == 1
    )
