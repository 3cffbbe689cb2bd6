"""Hostile-input fuzzing of the ingest path (issue 8); generators and invariants in
``services.fuzzing``, shared with ``toxwatch fuzz run``."""
