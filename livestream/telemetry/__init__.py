"""What the service tells the world: Prometheus metrics, MQTT events and their outbox, systemd notifications.

The service core reports through :class:`~livestream.telemetry.reporting.Reporter`, a
thin fan-out to three sinks the daemon builds and holds:
:class:`~livestream.telemetry.broadcast.Broadcaster` (in-process listeners and MQTT
payloads, published by :class:`~livestream.telemetry.mqtt.EventPublisher`),
:class:`~livestream.telemetry.recorder.MetricsRecorder` (Prometheus, collectors in
:mod:`~livestream.telemetry.metrics`) and
:class:`~livestream.telemetry.systemd_notify.Notifier` (sd_notify).
"""
