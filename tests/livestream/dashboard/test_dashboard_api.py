"""The dashboard's HTTP API on a running service: documents, events, files, and
the paths it must refuse (a real service and real sockets; ``http.client`` sends
each path exactly as written, with no client-side normalisation)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from livestream.daemon import ServiceHandle, run_service
from livestream.dashboard import server
from livestream.dashboard.api import DASHBOARD_SCHEMA
from livestream.ledger.store import Ledger
from livestream.ledger.summary import summarize_ledger
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.service_fixtures import service_config, write_session

# one service for the module: its start-up is the slow part
pytestmark = pytest.mark.asyncio(loop_scope="module")


def _request(
    base: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` exactly as written (no client-side normalisation)."""
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def _get(
    base: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_request, base, path, **kwargs)


class _Running:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.events: list[ServiceEvent] = []
        self.handles: list[ServiceHandle] = []

    def done(self) -> int:
        return sum(e.type is EventType.EXPOSURE_DONE for e in self.events)


async def _until(condition: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A service with the noop chain, 2 exposures done, dashboard on a free port."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    session, movies, _ = write_session(tmp_path, 2)
    config = service_config(
        session, movies, tmp_path / "project", dashboard={"enabled": True, "port": 0}
    )
    state = _Running()
    task = asyncio.create_task(
        run_service(
            config,
            stop=state.stop,
            listeners=(state.events.append,),
            on_started=state.handles.append,
            install_signal_handlers=False,
        )
    )
    try:
        await _until(lambda: state.done() >= 2, 60)
        url = state.handles[0].dashboard_url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        yield url, config.project.path, state
    finally:
        state.stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_documents_match_the_ledger_and_carry_the_schema(running: Any) -> None:
    base, project, _ = running
    status, headers, body = await _get(base, "/api/v1/session")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    session = json.loads(body)
    assert session["schema"] == DASHBOARD_SCHEMA
    ledger = Ledger(project / "livestream.sqlite", read_only=True)
    try:
        summary = summarize_ledger(ledger).to_json()
    finally:
        ledger.close()
    assert session["n_exposures"] == summary["n_exposures"] == 2
    assert session["exposures"] == summary["exposures"]
    assert session["backlog"] == 0
    assert session["state"] == "running"
    microscope = session["microscope"]  # read from the newest exposure's XML
    assert microscope["detector"]
    assert microscope["voltage_kv"] == 300.0
    assert microscope["pixel_size_a"] > 0
    status, _, body = await _get(base, "/api/v1/exposures")
    exposures = json.loads(body)
    assert [e["index"] for e in exposures["items"]] == [1, 2]
    assert all(e["states"]["second"] == "done" for e in exposures["items"])
    status, _, body = await _get(base, "/api/v1/class2d")
    assert json.loads(body) == {"schema": DASHBOARD_SCHEMA, "snapshot": None}


async def test_the_initial_model_document_and_its_pictures(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, project, _ = running
    # the document cache's age limit (5 s) shortened: its rebuild is tested, not 5 s
    monkeypatch.setattr(server, "_STALE_S", 1.5)
    status, _, body = await _get(base, "/api/v1/class3d")
    assert json.loads(body) == {"schema": DASHBOARD_SCHEMA, "snapshot": None}
    status, _, _ = await _get(base, "/api/v1/class3d/slices.png")
    assert status == 404  # no snapshot yet
    job = project / "InitialModel" / "job008"  # what livestream.class3d.live writes
    job.mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    for name in ("run_it010_class001_slices.png", "run_it010_fsc.png"):
        (job / name).write_bytes(png)
    (job / "run_class3d.json").write_text(
        json.dumps(
            {
                "iteration": 10,
                "particles_seen": 900,
                "pool_particles": 1000,
                "classes": 1,
                "symmetry": "C1",
                "resolution_a": 14.5,
                "class_fractions": [1.0],
                "orientation_coverage": 0.8,
                "largest_class": 1,
                "slices_png": [str(job / "run_it010_class001_slices.png")],
                "fsc_png": str(job / "run_it010_fsc.png"),
                "directions_png": "/elsewhere/run_it010_directions.png",
            }
        )
    )
    await asyncio.sleep(1.6)  # past the document cache (no service events now)
    status, _, body = await _get(base, "/api/v1/class3d")
    snapshot = json.loads(body)["snapshot"]
    assert snapshot["iteration"] == 10
    assert snapshot["resolution_a"] == 14.5
    assert snapshot["slices_png"] == "api/v1/class3d/slices.png?v=10"
    assert snapshot["directions_png"] is None  # outside the project: not served
    status, headers, body = await _get(base, "/" + snapshot["slices_png"])
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert body == png
    status, _, _ = await _get(base, "/api/v1/class3d/directions.png")
    assert status == 404
    status, _, _ = await _get(base, "/api/v1/class3d/model.png")
    assert status == 404


async def test_the_page_and_its_static_files_are_served_with_their_types(
    running: Any,
) -> None:
    base, _, _ = running
    expected = {
        "/": "text/html",
        "/static/app.js": "text/javascript",
        "/static/style.css": "text/css",
    }
    for path, content_type in expected.items():
        status, headers, body = await _get(base, path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(content_type), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert body
    _, _, page = await _get(base, "/")
    assert b"http://" not in page
    assert b"https://" not in page


async def test_events_stream_pushes_service_events(running: Any) -> None:
    base, _, _ = running
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"text/event-stream" in head
    first = await asyncio.wait_for(reader.readuntil(b"event: hello"), 5)
    assert first
    writer.close()
    await writer.wait_closed()


async def test_registered_outputs_are_served_with_validators(running: Any) -> None:
    base, project, _ = running
    status, _, body = await _get(base, "/api/v1/exposures")
    documents = sorted((project / "Noop" / "second").glob("*.json"))
    assert documents
    relative = documents[0].relative_to(project).as_posix()
    status, headers, body = await _get(base, f"/files/{relative}")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-cache"
    assert json.loads(body)["stage"] == "second"
    status, _, _ = await _get(
        base, f"/files/{relative}", headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/files/../livestream.sqlite",
        "/files/%2e%2e/livestream.sqlite",
        "/files/Noop/%2e%2e/%2e%2e/livestream.sqlite",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/livestream.sqlite",  # inside, but not a registered output
        "/files/Noop/second/unknown.json",
        "/api/v1/exposures/..%2f..%2fetc%2fpasswd/picks.png",
        "/static/..%2fapi.py",
        "/static/../server.py",
    ],
)
async def test_paths_out_of_the_registered_outputs_are_refused(
    running: Any, path: str
) -> None:
    base, _, _ = running
    status, headers, body = await _get(base, path)
    assert status in (403, 404), (path, status, body[:200])
    assert b"root:" not in body
    assert b"SQLite" not in body
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_a_registered_output_that_links_out_of_the_project_is_refused(
    running: Any, tmp_path: Path
) -> None:
    base, project, _ = running
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    document = sorted((project / "Noop" / "second").glob("*.json"))[0]
    relative = document.relative_to(project).as_posix()
    document.unlink()
    os.symlink(secret, document)
    status, _, body = await _get(base, f"/files/{relative}")
    assert status == 403
    assert b"secret" not in body


async def test_the_api_is_read_only(running: Any) -> None:
    base, _, _ = running
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = await _get(base, "/api/v1/session", method=method)
        assert status == 405, method


async def test_a_busy_port_is_a_config_error_naming_the_key(
    running: Any, tmp_path: Path
) -> None:
    base, _, _ = running
    port = int(base.rstrip("/").rsplit(":", 1)[1])
    session, movies, _ = write_session(tmp_path / "other", 1)
    config = service_config(
        session,
        movies,
        tmp_path / "other" / "project",
        dashboard={"enabled": True, "port": port},
    )
    with pytest.raises(OSError, match=r"key 'dashboard\.port'"):
        await run_service(config, stop=asyncio.Event(), install_signal_handlers=False)


async def test_a_stopping_service_tells_its_pages_and_serves_their_last_read(
    tmp_path: Path,
) -> None:
    """At shutdown an open page gets an ``ended`` event and can still read the
    final state (``state: stopped``); the service then stops serving."""
    session, movies, _ = write_session(tmp_path, 1)
    config = service_config(
        session, movies, tmp_path / "project", dashboard={"enabled": True, "port": 0}
    )
    state = _Running()
    task = asyncio.create_task(
        run_service(
            config,
            stop=state.stop,
            listeners=(state.events.append,),
            on_started=state.handles.append,
            install_signal_handlers=False,
        )
    )
    await _until(lambda: state.done() >= 1, 60)
    base = state.handles[0].dashboard_url
    assert base is not None
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"event: hello"), 5)
    state.stop.set()
    await asyncio.wait_for(reader.readuntil(b"event: ended"), 30)
    assert not task.done()  # still serving: the page has not read the final state
    reads = {
        name: json.loads((await _get(base, f"/api/v1/{name}"))[2])
        for name in ("session", "exposures", "class2d")
    }
    assert reads["session"]["state"] == "stopped"
    assert reads["session"]["n_exposures"] == 1
    assert [e["index"] for e in reads["exposures"]["items"]] == [1]
    assert await asyncio.wait_for(task, 2.0) == 0  # no need to wait out the linger
    writer.close()
    with pytest.raises((ConnectionRefusedError, OSError)):
        await _get(base, "/api/v1/session")
