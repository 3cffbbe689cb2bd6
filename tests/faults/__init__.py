"""Fault injection against the running pipeline (``services/faults.py``)."""
