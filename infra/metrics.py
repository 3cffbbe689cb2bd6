"""Prometheus metrics of the pipeline and of the safety picture.

Labels are bounded (event type, rejection code, dose level, grade): never a
participant id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "toxwatch_events_ingested", "Clinical events accepted, by type", ["type"], registry=r
        )
        self.rejected = Counter(
            "toxwatch_events_rejected",
            "Inbound messages rejected, by reason code",
            ["code"],
            registry=r,
        )
        self.duplicates = Counter(
            "toxwatch_events_duplicate",
            "Clinical events ignored as a repeated event_id",
            registry=r,
        )
        self.redelivered = Counter(
            "toxwatch_messages_redelivered",
            "Messages skipped as already applied (tracked offset)",
            registry=r,
        )
        self.derived = Counter(
            "toxwatch_safety_events_derived", "Derived safety events, by type", ["type"], registry=r
        )
        self.crs_grades = Counter(
            "toxwatch_crs_grade_changes",
            "CRS grade changes (crs.graded), by dose level and new grade",
            ["dose_level", "grade"],
            registry=r,
        )
        self.batch_size = Histogram(
            "toxwatch_batch_size",
            "Messages per applied batch",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "toxwatch_commit_seconds",
            "Event store commit latency per batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.relayed = Counter(
            "toxwatch_relay_published",
            "Events published by the relay, by topic",
            ["topic"],
            registry=r,
        )
        self.alert_delivery_seconds = Histogram(
            "toxwatch_alert_delivery_seconds",
            "Alert event recorded -> received by the endpoint, by channel",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.dispatch_failures = Counter(
            "toxwatch_alert_dispatch_failures",
            "Failed alert delivery attempts (retried), by channel",
            ["channel"],
            registry=r,
        )
        self.relay_position = Gauge(
            "toxwatch_relay_position", "Last notification id published by the relay", registry=r
        )
