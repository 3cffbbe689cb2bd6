"""Prometheus metrics of the pipeline and of the safety picture.

Labels are bounded (event type, rejection code, dose level, grade): never a
participant id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Metric name -> (label pairs -> value), as a read model computes them.
GaugeValues = Mapping[str, Mapping[tuple[tuple[str, str], ...], float]]

#: The safety gauges and what they count (the catalogue in the README).
SAFETY_GAUGES: dict[str, str] = {
    "toxwatch_participants": "Participants by status, dose level and disease",
    "toxwatch_crs_max_grade_participants": "Infused participants by their highest CRS grade",
    "toxwatch_icans_max_grade_participants": "Infused participants by their highest ICANS grade",
    "toxwatch_dlt_evaluable_participants": "DLT-evaluable participants by dose level",
    "toxwatch_dlt_participants": "Participants with a DLT by dose level",
    "toxwatch_dlt_windows_open": "DLT windows open by dose level",
    "toxwatch_dose_level_decision": "The latest escalation decision per dose level (1)",
    "toxwatch_stopping_rule_triggered": "1 once a stopping rule's boundary is crossed",
    "toxwatch_enrollment_paused": "1 while enrolment is paused",
    "toxwatch_alerts_open": "Alerts neither acknowledged nor resolved, by severity",
    "toxwatch_sae_reports_overdue": "SAE reports past their deadline with their alert open",
    "toxwatch_follower_lag_events": "Log entries a follower has not processed yet",
}


class GaugeCollector(Collector):
    """Gauges computed on each scrape from a read model (``values``)."""

    def __init__(self, values: Callable[[], GaugeValues]) -> None:
        self.values = values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.values()
        for name, documentation in SAFETY_GAUGES.items():
            series = current.get(name, {})
            labels = sorted({k for pairs in series for k, _ in pairs})
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for pairs, value in sorted(series.items()):
                family.add_metric([dict(pairs).get(k, "") for k in labels], value)
            yield family


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
        self.consumer_lag = Gauge(
            "toxwatch_consumer_lag_messages",
            "Clinical-topic messages not yet applied, per partition (after the last batch)",
            ["partition"],
            registry=r,
        )
        self.topic_replacements = Counter(
            "toxwatch_ingest_topic_replacements",
            "Inbound topics found replaced (deleted and created again, or lost with the "
            "broker's data) whose replacement this worker recorded, by topic",
            ["topic"],
            registry=r,
        )
        self.topic_incarnation = Gauge(
            "toxwatch_ingest_topic_incarnation",
            "The incarnation of each inbound topic the worker applies (0 as first bound, "
            "one more per recorded replacement)",
            ["topic"],
            registry=r,
        )
        self.relay_position = Gauge(
            "toxwatch_relay_position", "Last notification id published by the relay", registry=r
        )


class FollowerMetrics:
    """A log follower's liveness (the trial monitor, the alerts process): its passes
    and when the last one succeeded (a stuck or failing loop stops the clock)."""

    def __init__(self, follower: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.follower = follower
        self.entries = Counter(
            "toxwatch_follower_entries",
            "Log entries a follower processed",
            ["follower"],
            registry=self.registry,
        ).labels(follower)
        self.last_pass = Gauge(
            "toxwatch_follower_last_pass_timestamp_seconds",
            "When a follower last completed a pass over the log (Unix time)",
            ["follower"],
            registry=self.registry,
        ).labels(follower)

    def passed(self, entries: int) -> None:
        self.entries.inc(entries)
        self.last_pass.set_to_current_time()
