"""Live events over MQTT (aiomqtt, QoS 1) that survive broker outages.

Topics, for a session ``S``::

    livestream/S/status          retained; the broker's last will sets it to "offline"
    livestream/S/exposure/<id>   one message per processed exposure
    livestream/S/class2d         one message per 2D classification snapshot
    livestream/S/class3d         one message per 3D initial-model snapshot
    livestream/S/refine3d        one message per refinement of the 3D map (and its
                                 Rebalance Orientations), finished or abandoned

``publish_*`` never block on the network: they stamp the payload
(:func:`livestream.telemetry.events.stamp_event`) and queue it in a bounded
:class:`~livestream.telemetry.outbox.Outbox`. A background task in a named task group connects,
drains the outbox and reconnects with jittered exponential backoff. A message leaves
the outbox only after the broker's PUBACK. Overflow drops the oldest message and
counts it in ``livestream_mqtt_dropped_messages_total``.

Given a ``store`` (the project's ledger), exposure and class2d events are kept there
until acknowledged and a new publisher sends what an earlier one left, oldest first
(same ``message_id``, so subscribers can drop the rare resend); the retained status
is not kept: the new run publishes its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt

from livestream.telemetry.events import (
    EventKind,
    ServiceState,
    encode_event,
    stamp_event,
    status_payload,
)
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.outbox import MessageStore, Outbox, OutgoingMessage

__all__ = ["EventPublisher", "MqttSettings", "topic_for"]

log = logging.getLogger(__name__)

_FORBIDDEN_IN_LEVEL = frozenset("/+#\0")


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """Where and how to publish; ``host=""`` switches MQTT off."""

    host: str = ""
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system's CA store
    username: str | None = None
    password: str | None = None
    client_id: str = ""  # "" -> livestream-<session>-<random>
    outbox_size: int = 10_000
    keepalive_s: int = 30
    publish_timeout_s: float = 10.0  # wait this long for a PUBACK
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    drain_timeout_s: float = 5.0  # at exit, wait this long to flush the outbox


def _check_level(value: str, what: str) -> str:
    if not value or _FORBIDDEN_IN_LEVEL.intersection(value):
        raise ValueError(f"MQTT {what} {value!r} is empty or contains / + # or NUL")
    return value


def topic_for(session: str, kind: EventKind, exposure_id: str | None = None) -> str:
    """``livestream/<session>/<kind>[/<exposure_id>]``."""
    topic = f"livestream/{_check_level(session, 'session name')}/{kind.value}"
    if exposure_id is not None:
        topic += f"/{_check_level(exposure_id, 'exposure id')}"
    return topic


def backoff_delay_s(attempt: int, settings: MqttSettings, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [min/2, min * 2**attempt], capped.
    The exponent stops at 60 (a float ``2.0**attempt`` overflows at 1024: after
    that many failed attempts, a long outage or a refused password with a short
    minimum, the sender would stop)."""
    growth = 2.0 ** min(attempt, 60)
    ceiling = min(settings.reconnect_max_s, settings.reconnect_min_s * growth)
    return rng.uniform(min(settings.reconnect_min_s / 2, ceiling), ceiling)


class EventPublisher:
    """Async context manager that publishes a session's events (see module doc)."""

    def __init__(
        self,
        settings: MqttSettings,
        session_name: str,
        *,
        metrics: ServiceMetrics | None = None,
        store: MessageStore | None = None,
    ) -> None:
        self.settings = settings
        self.session_name = session_name
        self.status_topic = topic_for(session_name, EventKind.STATUS)
        self._metrics = metrics
        # without a broker nothing is stored (nor restored)
        self._outbox = Outbox(
            settings.outbox_size, store=store if settings.host else None
        )
        self._client_id = (
            settings.client_id or f"livestream-{session_name}-{uuid.uuid4().hex[:8]}"
        )
        self._rng = random.Random()  # jitter only; not a scientific random stream
        self._group: asyncio.TaskGroup | None = None
        self._sender: asyncio.Task[None] | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._last_state = ""
        self._dropped = 0
        self.connected = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.host)

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    async def __aenter__(self) -> Self:
        if not self.enabled:
            return self
        s = self.settings
        if s.password and not s.tls:
            log.warning(
                "MQTT: the password of %r is sent unencrypted to broker %s:%d"
                " (set mqtt.tls = true)",
                s.username,
                s.host,
                s.port,
            )
        if s.tls:
            try:
                self._tls_context = ssl.create_default_context(cafile=s.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"MQTT ca_file {s.ca_file!r}: {exc}") from exc
        dropped = self._outbox.restore()
        if len(self._outbox):
            log.info("MQTT: %d event(s) of an earlier run to send", len(self._outbox))
        if dropped:
            self._count_dropped(dropped)
        self._report_depth()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._sender = self._group.create_task(
            self._send_forever(), name=f"mqtt-sender[{self.session_name}]"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._group is None:
            return None
        try:
            drain_s = self.settings.drain_timeout_s
            if exc_type is not None:  # an error or a cancellation ends the service
                summary = f"service ended by {exc_type.__name__}"
                await self.publish_status(
                    status_payload(ServiceState.OFFLINE, summary=summary)
                )
                if issubclass(exc_type, asyncio.CancelledError):
                    drain_s = min(drain_s, 1.0)  # a forced exit: do not linger
            elif self._last_state != ServiceState.STOPPED:
                await self.publish_status(status_payload(ServiceState.STOPPED))
            await self.flush(drain_s)
        finally:
            if self._sender is not None:
                self._sender.cancel()
                await asyncio.wait([self._sender])  # no raise: it is ours to cancel
            kept = self._outbox.n_stored
            if kept:
                log.info(
                    "MQTT: %d event(s) kept in the ledger for the next start", kept
                )
            lost = self._outbox.discard_all()
            if lost:
                log.warning("MQTT: %d message(s) not delivered at exit", lost)
                self._count_dropped(lost)
            self._report_depth()
            group, self._group = self._group, None
        # The sender is finished: the group raises only if it failed by itself. The
        # body's own exception propagates unchanged (not wrapped in a group).
        await group.__aexit__(None, None, None)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged everything queued; False on timeout."""
        if not self.enabled:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._outbox.wait_empty()
        except TimeoutError:
            return False
        return True

    async def publish_status(self, payload: Mapping[str, Any]) -> None:
        """Retained status of the service (use :func:`events.status_payload`).

        If the service already published ``stopped`` (with its final counts), the
        clean exit does not overwrite it.
        """
        self._last_state = str(payload.get("state", ""))
        self._enqueue(EventKind.STATUS, self.status_topic, payload, retain=True)

    async def publish_exposure(
        self, exposure_id: str, payload: Mapping[str, Any]
    ) -> None:
        """One processed exposure (use :func:`events.exposure_payload`)."""
        topic = topic_for(self.session_name, EventKind.EXPOSURE, exposure_id)
        self._enqueue(EventKind.EXPOSURE, topic, payload, retain=False)

    async def publish_class2d(self, payload: Mapping[str, Any]) -> None:
        """One 2D classification snapshot."""
        topic = topic_for(self.session_name, EventKind.CLASS2D)
        self._enqueue(EventKind.CLASS2D, topic, payload, retain=False)

    async def publish_class3d(self, payload: Mapping[str, Any]) -> None:
        """One 3D initial-model snapshot."""
        topic = topic_for(self.session_name, EventKind.CLASS3D)
        self._enqueue(EventKind.CLASS3D, topic, payload, retain=False)

    async def publish_refine3d(self, payload: Mapping[str, Any]) -> None:
        """One refinement of the live 3D map (finished or abandoned)."""
        topic = topic_for(self.session_name, EventKind.REFINE3D)
        self._enqueue(EventKind.REFINE3D, topic, payload, retain=False)

    def _enqueue(
        self, kind: EventKind, topic: str, payload: Mapping[str, Any], *, retain: bool
    ) -> None:
        data = encode_event(stamp_event(kind, self.session_name, payload))
        if not self.enabled:
            return
        durable = kind is not EventKind.STATUS  # a new run publishes its own status
        dropped = self._outbox.put(
            OutgoingMessage(topic=topic, payload=data, retain=retain, durable=durable)
        )
        if dropped:
            self._count_dropped(dropped)
        self._report_depth()

    def _count_dropped(self, n: int) -> None:
        before, self._dropped = self._dropped, self._dropped + n
        if before // 1000 != self._dropped // 1000 or before == 0:  # no log flood
            log.warning(
                "MQTT: %d message(s) dropped so far (outbox of %d full or undelivered)",
                self._dropped,
                self._outbox.capacity,
            )
        if self._metrics is not None:
            self._metrics.mqtt_dropped(n)

    def _report_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.mqtt_outbox(len(self._outbox))

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        will = stamp_event(
            EventKind.STATUS, self.session_name, status_payload(ServiceState.OFFLINE)
        )
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=self._client_id,
            will=aiomqtt.Will(
                self.status_topic, encode_event(will), qos=1, retain=True
            ),
            tls_context=self._tls_context,
            keepalive=s.keepalive_s,
            timeout=s.publish_timeout_s,
        )

    async def _send_forever(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._client() as client:
                    log.info(
                        "MQTT: connected to %s:%d",
                        self.settings.host,
                        self.settings.port,
                    )
                    self.connected.set()
                    attempt = 0
                    await self._drain(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = backoff_delay_s(attempt, self.settings, self._rng)
                attempt += 1
                log.warning(
                    "MQTT: %s:%d unavailable (%s); %d queued; retrying in %.1f s",
                    self.settings.host,
                    self.settings.port,
                    exc,
                    len(self._outbox),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            message = await self._outbox.take()
            try:
                await client.publish(
                    message.topic, message.payload, qos=1, retain=message.retain
                )
            except BaseException:  # MqttError, CancelledError: keep it, re-raise
                dropped = self._outbox.release(message)
                if dropped:
                    self._count_dropped(dropped)
                raise
            self._outbox.acknowledge(message)
            self._report_depth()
