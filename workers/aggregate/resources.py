"""The aggregate pipeline's resources: events arrive on a Kinesis stream (and an SQS queue that feeds it),
per-entity metrics live in `fleet-metrics`, event-id markers in `fleet-events-seen`, alerts go to an
EventBridge bus. Leases and checkpoints are the runtime's own (`shared.resources.LEASES`)."""

from __future__ import annotations

from shared.resources import Bus, Queue, Stream, Table

EVENTS = Queue("events", "fleet-events")
EVENTS_STREAM = Stream("events", "fleet-events", shards=2)
METRICS = Table("metrics", "fleet-metrics", hash_key="entity_id", range_key="entity_type")
# One marker per event that carries an `event_id`, so a replay of it counts once (expires after `ttl`).
SEEN = Table("seen", "fleet-events-seen", hash_key="pk", ttl_attribute="ttl")
ALERTS = Bus("alerts", "fleet-alerts")
