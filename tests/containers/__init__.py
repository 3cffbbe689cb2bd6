"""The end-to-end suite against the production stack's backing services, Apache Kafka
(KRaft) and PostgreSQL, run in containers by testcontainers; skipped with the reason
when no Docker engine answers."""
