"""MQTT agent: connection supervisor, topics, outbox drain."""
