"""What the service tells the world: Prometheus metrics, MQTT events and their outbox, systemd notifications."""
