"""The end-to-end suite on Kafka and PostgreSQL in containers: the streamed cohort
derives exactly what ``toxwatch process`` derives, the worker and the relay start
together on a fresh store, and a worker killed mid-stream loses and duplicates
nothing. The tests are ``tests/integration``'s own, imported; this folder's
``conftest.py`` gives them the container services.
"""

from __future__ import annotations

import pytest

from tests.integration.test_crash_safety import (
    test_worker_killed_mid_stream_records_and_publishes_everything_exactly_once,
)
from tests.integration.test_kafka_pipeline import (
    test_streamed_cohort_derives_the_same_events_as_the_process_command,
    test_worker_and_relay_started_together_on_a_fresh_store_both_keep_running,
)

#: ``docker_engine`` first: without an engine, skip before any other fixture runs.
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.usefixtures("docker_engine")]

__all__ = [
    "test_streamed_cohort_derives_the_same_events_as_the_process_command",
    "test_worker_and_relay_started_together_on_a_fresh_store_both_keep_running",
    "test_worker_killed_mid_stream_records_and_publishes_everything_exactly_once",
]
