"""Following the event store's notification log: the loop every follower shares
(the trial monitor, the alerts process, each dispatcher endpoint, the API's views).

A pass reads what follows the follower's position and commits its results with the
new position in one transaction, so a failed pass commits nothing: the loop logs it
and tries again from the stored position instead of dying (the worker, the monitor
and the alerts process must never stop on a bad pass). A store that keeps failing
(a connection left broken) makes the process exit, to be restarted and reconnect.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from eventsourcing.persistence import IntegrityError

from services.application import STORE_ERRORS

log = logging.getLogger(__name__)
#: Consecutive passes failed by the store before the process exits (its supervisor
#: restarts it): about that many seconds.
STORE_FAILURES_BEFORE_EXIT = 10


def follow_log(
    run_once: Callable[[], int],
    stop: threading.Event,
    *,
    name: str,
    poll_seconds: float,
    after_failure: Callable[[], None] | None = None,
    pause_after_failure_s: float = 1.0,
    on_pass: Callable[[int], None] | None = None,
) -> None:
    """Call ``run_once`` (the number of log entries it handled) until ``stop`` is
    set, waiting ``poll_seconds`` whenever it is caught up. A concurrent write
    (``IntegrityError``) is retried at once; any other failure after a pause, with
    ``after_failure`` run first (to drop state the failed pass built). ``on_pass``
    hears of each successful pass (the entries it handled): a liveness signal."""
    store_failures = 0
    while not stop.is_set():
        try:
            handled = run_once()
            store_failures = 0
            if on_pass is not None:
                on_pass(handled)
            if not handled:
                stop.wait(poll_seconds)
        except IntegrityError:
            log.info("%s: a concurrent write; retrying the pass", name)
            if after_failure is not None:
                after_failure()
        except Exception as error:
            log.exception("%s: pass failed; retrying", name)
            if after_failure is not None:
                after_failure()
            if isinstance(error, STORE_ERRORS):
                store_failures += 1
                if store_failures >= STORE_FAILURES_BEFORE_EXIT:
                    # A connection can stay broken after the store recovers (SQLite
                    # after a failed write): a fresh process reconnects and resumes
                    # from its tracked position.
                    log.critical("%s: the store keeps failing: exiting to reconnect", name)
                    logging.shutdown()
                    os._exit(75)
            stop.wait(pause_after_failure_s)
