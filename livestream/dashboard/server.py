"""The operator's web page, served by the service in its own event loop.

aiohttp rather than Starlette + uvicorn: its ``AppRunner``/``TCPSite`` start and
stop a server inside a loop someone else owns (no signal handlers, no lifespan
protocol, no second server object to supervise), it streams server-sent events
with a plain ``StreamResponse``, and it is one dependency instead of three.

Routes (all ``GET``; anything else is 405, see docs/dashboard.md):

* ``/`` and ``/static/<name>``: the page, its script and stylesheet (package data);
* ``/api/v1/session``, ``/api/v1/exposures``, ``/api/v1/class2d``,
  ``/api/v1/class3d``: JSON (:mod:`livestream.dashboard.api`);
* ``/api/v1/events``: server-sent events, one per service event, so the page
  updates without polling the ledger;
* ``/api/v1/exposures/<id>/picks.png``, ``.../ctf.png``,
  ``/api/v1/class2d/montage.png``, ``/api/v1/class3d/{slices,fsc,directions}.png``:
  the pictures of the newest results; a pick
  overlay missing on disk (a rejected exposure is not picked) is rendered from
  the micrograph on demand, off the event loop, and cached;
* ``/files/<path>``: any output the ledger or the latest 2D snapshot names,
  nothing else (no ``..``, no absolute path, no symlink out of the project).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from aiohttp import web

from livestream.config import ServiceConfig
from livestream.dashboard.api import (
    ProjectView,
    class2d_document,
    class3d_document,
    class3d_image_path,
    exposures_document,
    find_exposure_outputs,
    is_registered_output,
    montage_path,
    session_document,
)
from livestream.stages.params import CurateParams
from livestream.stages.thumbnails import render_pick_overlay
from livestream.telemetry.broadcast import ServiceEvent
from mdcatch.errors import InputFieldError
from pipelines.io.micrographs import read_micrograph

__all__ = ["DashboardServer", "DashboardSources"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# what /files serves; other registered outputs (MRC stacks ...) are refused
_FILE_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".star": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self';"
        " script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
}
_NO_STORE = "no-store"
_REVALIDATE = "no-cache"  # may be kept, but asked again (ETag) before each use
_KEEPALIVE_S = 15.0
_SUBSCRIBER_QUEUE = 256
# at shutdown, how long the pages that were watching may take to read the final state
_LINGER_S = 3.0
_PAGE_DOCUMENTS = ("session", "exposures", "class2d")  # what a page's refresh reads
_RENDER_CACHE = 64  # on-demand pick overlays kept in memory
_THUMBNAIL_PX = 256
_FRESH_S = 1.0  # a document this young is served again, events or not
_STALE_S = 5.0  # without events, rebuilt after this long (ages and rates move)


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardSources:
    """Live facts that are not in the ledger, read at each request."""

    thresholds: Callable[[], Mapping[str, CurateParams]]  # curation in force
    queue: Callable[[], tuple[int, int]]  # (in flight, queued)
    stopping: Callable[[], bool]  # the service is draining


class _EventHub:
    """Fans service events out to the open event streams (bounded; a slow page
    misses events and catches up on its next refresh)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes | None]] = set()

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(_SUBSCRIBER_QUEUE)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._queues.discard(queue)

    @property
    def n_subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: ServiceEvent) -> None:
        if not self._queues:
            return
        body = {
            "type": event.type.value,
            "exposure_id": event.exposure_id,
            "stage": event.stage,
            "state": event.state,
            "time_unix_s": event.time_unix_s,
        }
        message = f"event: {event.type.value}\ndata: {json.dumps(body)}\n\n".encode()
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    def close(self) -> None:
        """Tell every page the service stopped (after the events it has not
        read yet), then end its stream."""
        for queue in self._queues:
            while queue.qsize() > _SUBSCRIBER_QUEUE - 2:
                queue.get_nowait()  # room for the last two messages
            queue.put_nowait(b"event: ended\ndata: {}\n\n")
            queue.put_nowait(None)


def _etag(path: Path) -> str:
    stat = path.stat()
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def _checked_relative(relative: str) -> PurePosixPath:
    """A request's project-relative path, or 403 for an escaping one."""
    pure = PurePosixPath(relative)
    if (
        not relative
        or "\x00" in relative
        or "\\" in relative
        or pure.is_absolute()
        or any(part in ("..", ".") for part in pure.parts)
    ):
        raise web.HTTPForbidden(text="outside the project")
    return pure


class DashboardServer:
    """The page and its API on ``[dashboard]``'s host and port."""

    def __init__(
        self, config: ServiceConfig, sources: DashboardSources, runner: web.AppRunner
    ) -> None:
        self._config = config
        self._sources = sources
        self._runner = runner
        self._hub = _EventHub()
        self._project = config.project.path.resolve()
        self._rendered: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        # built documents: key -> (monotonic time built, event generation, JSON)
        self._documents: dict[str, tuple[float, int, bytes]] = {}
        self._building: dict[str, asyncio.Lock] = {}
        self._generation = 0  # service events so far
        self._closing = False
        self._pages_at_close = 0  # pages watching when the service stopped
        self._final_reads: Counter[str] = Counter()  # their reads since, by document
        self._all_read = asyncio.Event()
        self.address: tuple[str, int] = ("", 0)

    # -- life cycle -----------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        config: ServiceConfig,
        sources: DashboardSources,
        *,
        any_port_if_busy: bool = False,
    ) -> DashboardServer:
        """Serve on ``config.dashboard``'s host and port (any free port if that
        one is busy and ``any_port_if_busy``)."""
        app = web.Application(middlewares=[_security_headers])
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        server = cls(config, sources, runner)
        server._add_routes(app)
        await runner.setup()
        host, port = config.dashboard.host, config.dashboard.port
        try:
            await server._bind(host, port)
        except OSError as exc:
            if not any_port_if_busy:
                await runner.cleanup()
                raise OSError(
                    f"key 'dashboard.port': cannot serve on {host}:{port}: {exc}"
                ) from exc
            log.warning(
                "dashboard port %d is busy (%s): using any free port", port, exc
            )
            await server._bind(host, 0)
        return server

    async def _bind(self, host: str, port: int) -> None:
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[-1]  # this site's socket
        self.address = (str(bound[0]), int(bound[1]))

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def n_streams(self) -> int:
        """Pages with an open event stream."""
        return self._hub.n_subscribers

    def on_event(self, event: ServiceEvent) -> None:
        """A broadcaster listener: push the event to every open page."""
        self._generation += 1
        self._hub.publish(event)

    async def close(self) -> None:
        """Send every open page an ``ended`` event, serve the final state to the
        pages that come for it (at most ``_LINGER_S``), then stop serving."""
        self._closing = True
        self._pages_at_close = self._hub.n_subscribers
        self._hub.close()
        if self._pages_at_close:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LINGER_S):
                    await self._all_read.wait()
        await self._runner.cleanup()

    # -- routes ---------------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        get = app.router.add_get
        get("/", self._index)
        get("/static/{name}", self._static)
        get("/api/v1/session", self._session)
        get("/api/v1/exposures", self._exposures)
        get("/api/v1/class2d", self._class2d)
        get("/api/v1/events", self._events)
        get("/api/v1/exposures/{exposure_id}/picks.png", self._picks_png)
        get("/api/v1/exposures/{exposure_id}/ctf.png", self._ctf_png)
        get("/api/v1/class2d/montage.png", self._montage_png)
        get("/api/v1/class3d", self._class3d)
        get("/api/v1/class3d/{name}.png", self._class3d_png)
        get("/files/{path:.*}", self._file)

    def _view(self) -> ProjectView:
        return ProjectView(
            project=self._config.project.path,
            session=self._config.session.path,
            software=self._config.session.software.value,
            class2d_job=self._config.class2d.job,
            class3d_job=self._config.class3d.job,
            thresholds=dict(self._sources.thresholds()),
            path_map=self._config.session.path_map,
        )

    async def _json(
        self, key: str, build: Callable[[], dict[str, Any]]
    ) -> web.Response:
        """A document, built off the loop and shared by every page asking for it
        within :data:`_FRESH_S` (or until the next service event, at most
        :data:`_STALE_S`): more pages add no work for the ledger."""
        async with self._building.setdefault(key, asyncio.Lock()):
            cached = self._documents.get(key)
            now = time.monotonic()
            if cached is None or not _still_good(cached, now, self._generation):
                generation = self._generation
                body = await asyncio.to_thread(_encode, build)
                cached = (now, generation, body)
                self._documents[key] = cached
        return web.Response(
            body=cached[2],
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Cache-Control": _NO_STORE,
            },
        )

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file(request.match_info["name"])

    async def _static_file(self, name: str) -> web.Response:
        # the names are the package's own files; a request never builds a path
        known = {p.name: p for p in STATIC.iterdir() if p.suffix in _STATIC_TYPES}
        path = known.get(name)
        if path is None:
            raise web.HTTPNotFound()
        body = await asyncio.to_thread(path.read_bytes)
        return web.Response(
            body=body,
            headers={
                "Content-Type": _STATIC_TYPES[path.suffix],
                "Cache-Control": _REVALIDATE,
            },
        )

    async def _session(self, request: web.Request) -> web.Response:
        view = self._view()
        in_flight, queued = self._sources.queue()
        if self._closing:
            state = "stopped"
        else:
            state = "draining" if self._sources.stopping() else "running"
        response = await self._json(
            f"session:{state}",
            lambda: session_document(
                view, state=state, in_flight=in_flight, queued=queued
            ),
        )
        self._read_after_close("session")
        return response

    async def _exposures(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "5000"))
        except ValueError:
            raise web.HTTPBadRequest(text="limit: not an integer") from None
        view = self._view()
        response = await self._json(
            f"exposures:{limit}", lambda: exposures_document(view, limit=limit)
        )
        self._read_after_close("exposures")
        return response

    async def _class2d(self, request: web.Request) -> web.Response:
        view = self._view()
        response = await self._json("class2d", lambda: class2d_document(view))
        self._read_after_close("class2d")
        return response

    async def _class3d(self, request: web.Request) -> web.Response:
        view = self._view()
        return await self._json("class3d", lambda: class3d_document(view))

    def _read_after_close(self, document: str) -> None:
        """Count a page's read of ``document`` once the service stopped: when
        every page that was watching has read all three, ``close`` may go on."""
        if not self._closing:
            return
        self._final_reads[document] += 1
        if all(
            self._final_reads[name] >= self._pages_at_close for name in _PAGE_DOCUMENTS
        ):
            self._all_read.set()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": _NO_STORE,
                "X-Accel-Buffering": "no",  # nginx: pass events on at once
            }
        )
        await response.prepare(request)
        queue = self._hub.subscribe()
        try:
            await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            while True:
                try:
                    async with asyncio.timeout(_KEEPALIVE_S):
                        message = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if message is None:
                    break
                await response.write(message)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self._hub.unsubscribe(queue)
        return response

    # -- files ----------------------------------------------------------------------
    async def _serve_project_file(
        self, request: web.Request, relative: str
    ) -> web.Response:
        pure = _checked_relative(relative)
        content_type = _FILE_TYPES.get(pure.suffix.lower())
        if content_type is None:
            raise web.HTTPForbidden(text=f"{pure.suffix!r} files are not served")
        path = Path(self._project, *pure.parts)
        resolved = await asyncio.to_thread(path.resolve)
        if not resolved.is_relative_to(self._project):
            raise web.HTTPForbidden(text="outside the project")  # a symlink out
        if not resolved.is_file():
            raise web.HTTPNotFound()
        etag = await asyncio.to_thread(_etag, resolved)
        headers = {
            "Content-Type": content_type,
            "Cache-Control": _REVALIDATE,
            "ETag": etag,
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        body = await asyncio.to_thread(resolved.read_bytes)
        return web.Response(body=body, headers=headers)

    async def _file(self, request: web.Request) -> web.Response:
        relative = request.match_info["path"]
        pure = _checked_relative(relative)
        view = self._view()
        if not await asyncio.to_thread(is_registered_output, view, str(pure)):
            raise web.HTTPNotFound()
        return await self._serve_project_file(request, relative)

    async def _outputs(self, request: web.Request) -> dict[str, str]:
        view = self._view()
        eid = request.match_info["exposure_id"]
        return await asyncio.to_thread(find_exposure_outputs, view, eid)

    async def _picks_png(self, request: web.Request) -> web.Response:
        outputs = await self._outputs(request)
        if "thumbnail" in outputs:
            return await self._serve_project_file(request, outputs["thumbnail"])
        if "micrograph" not in outputs:
            raise web.HTTPNotFound()
        return await self._rendered_overlay(outputs["micrograph"])

    async def _ctf_png(self, request: web.Request) -> web.Response:
        outputs = await self._outputs(request)
        if "png" not in outputs:
            raise web.HTTPNotFound()
        return await self._serve_project_file(request, outputs["png"])

    async def _montage_png(self, request: web.Request) -> web.Response:
        relative = await asyncio.to_thread(montage_path, self._view())
        if relative is None:
            raise web.HTTPNotFound()
        return await self._serve_project_file(request, relative)

    async def _class3d_png(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        relative = await asyncio.to_thread(class3d_image_path, self._view(), name)
        if relative is None:
            raise web.HTTPNotFound()
        return await self._serve_project_file(request, relative)

    async def _rendered_overlay(self, micrograph: str) -> web.Response:
        """The micrograph without picks, rendered once per file version."""
        pure = _checked_relative(micrograph)
        path = Path(self._project, *pure.parts)
        resolved = await asyncio.to_thread(path.resolve)
        if not resolved.is_relative_to(self._project) or not resolved.is_file():
            raise web.HTTPNotFound()
        key = (str(resolved), resolved.stat().st_mtime_ns)
        body = self._rendered.get(key)
        if body is None:
            try:
                body = await asyncio.to_thread(_render_micrograph, resolved)
            except InputFieldError as exc:  # unreadable: no picture, said why
                raise web.HTTPNotFound(text=str(exc)) from None
            self._rendered[key] = body
            while len(self._rendered) > _RENDER_CACHE:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return web.Response(
            body=body,
            headers={"Content-Type": "image/png", "Cache-Control": _REVALIDATE},
        )


def _still_good(cached: tuple[float, int, bytes], now: float, generation: int) -> bool:
    built, built_generation, _ = cached
    age = now - built
    return age < _FRESH_S or (built_generation == generation and age < _STALE_S)


def _encode(build: Callable[[], dict[str, Any]]) -> bytes:
    return json.dumps(build(), allow_nan=False).encode()


def _render_micrograph(path: Path) -> bytes:
    image, _ = read_micrograph(path)
    none = np.zeros(0)
    return render_pick_overlay(image, none, none, none, max_px=_THUMBNAIL_PX)


@web.middleware
async def _security_headers(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        exc.headers.setdefault("Cache-Control", _NO_STORE)
        raise
    if not response.prepared:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response
