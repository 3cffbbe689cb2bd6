"""The trial monitor process (architecture decision 6).

It follows the event store's notification log after its tracked position, turns the
participant events that matter to dose decisions and stopping rules into facts of
the :class:`domain.trial.Trial` aggregate, and saves the Trial and DoseLevel
aggregates' new events **with its new position in one transaction** (tracking
``trial-monitor``), so a restart resumes exactly where it stopped and a replay of the
same log gives the same events. Its events go to the same log, and the relay
publishes them like the participants' (``participant_id`` ``-``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from domain.participant import Participant
from domain.protocol import ProtocolParameters
from domain.records import TrialLog
from domain.trial import DoseLevel, Fact, Trial, dose_level_aggregate_id, trial_aggregate_id
from infra.store import TRACKINGS
from services.application import SafetyMonitoring
from services.following import follow_log

log = logging.getLogger(__name__)

MONITOR_TRACKING = "trial-monitor"
_RELATED = frozenset({"possible", "probable", "definite"})
INPUT_TOPICS = tuple(
    get_topic(cls)
    for cls in (
        Participant.DLTWindowOpened,
        Participant.DLTWindowClosed,
        Participant.CRSGraded,
        Participant.ICANSGraded,
        Participant.GradeRevised,
        Participant.ClinicalEventRecorded,
        TrialLog.TrialEventRecorded,
    )
)


_GRADED = (Participant.CRSGraded, Participant.ICANSGraded, Participant.GradeRevised)


def facts_from(event: Any, dose_of: dict[str, str]) -> Iterable[Fact]:
    """The facts one stored event gives (``dose_of``: participant -> dose level)."""
    if isinstance(event, Participant.DLTWindowOpened | Participant.DLTWindowClosed):
        contract = event.to_contract()
        participant = contract.participant_id
        if isinstance(event, Participant.DLTWindowOpened):
            if contract.dose_level:
                dose_of[participant] = contract.dose_level
            yield Fact(
                "window_opened",
                contract.event_id,
                contract.effective_at,
                participant,
                contract.dose_level,
                {"ends_at": contract.data["ends_at"]},
                tuple(contract.caused_by),
            )
        else:
            yield Fact(
                "window_closed",
                contract.event_id,
                contract.effective_at,
                participant,
                contract.dose_level or dose_of.get(participant),
                {"evaluable": contract.data["evaluable"], "had_dlt": contract.data["had_dlt"]},
                (contract.event_id,),
            )
    elif isinstance(
        event, Participant.CRSGraded | Participant.ICANSGraded | Participant.GradeRevised
    ):
        contract = event.to_contract()
        data = contract.data
        term = data.get("term") or ("CRS" if isinstance(event, Participant.CRSGraded) else "ICANS")
        grade = data.get("to_grade", data.get("grade", 0))
        if term in ("CRS", "ICANS") and grade >= 4:
            participant = contract.participant_id
            yield Fact(
                "grade4",
                f"grade4:{participant}:{term}",
                contract.effective_at,
                participant,
                contract.dose_level or dose_of.get(participant),
                {"term": term, "grade": grade},
                (contract.event_id,),
            )
    elif isinstance(event, Participant.ClinicalEventRecorded):
        wire = event.event
        if wire["type"] != "death.reported":
            return
        data = wire["data"]
        related = data.get("related")
        if related in _RELATED or (related is None and data.get("attributed_to") == "product"):
            participant = wire["participant_id"]
            yield Fact(
                "related_death",
                wire["event_id"],
                datetime.fromisoformat(wire["occurred_at"]),
                participant,
                dose_of.get(participant),
                {"cause": data["cause"], "related": related},
            )
    elif isinstance(event, TrialLog.TrialEventRecorded):
        wire = event.event
        if wire["type"] != "committee.decided":
            return
        data = wire["data"]
        yield Fact(
            "committee",
            wire["event_id"],
            datetime.fromisoformat(wire["occurred_at"]),
            "-",
            data.get("dose_level"),
            {
                "committee": data["committee"],
                "decision": data["decision"],
                "reason": data["reason"],
            },
        )


class TrialMonitor:
    """Follows the log of ``app``'s store and keeps the trial aggregates up to date."""

    def __init__(self, app: SafetyMonitoring, *, batch_size: int = 2000) -> None:
        self.app = app
        self.batch_size = batch_size

    def position(self) -> int:
        return self.app.tracked(MONITOR_TRACKING) or 0

    def run_once(self, *, through: int | None = None) -> int:
        """Process the next notifications (none after ``through``); the number read
        (0: caught up)."""
        after = self.position()
        notifications = self.app.recorder.select_notifications(
            start=after,
            limit=self.batch_size,
            stop=through,
            topics=INPUT_TOPICS,
            inclusive_of_start=False,
        )
        if not notifications:
            return 0
        read_through = notifications[-1].id
        trials: dict[str, Trial] = {}
        doses_of: dict[str, dict[str, str]] = {}  # per trial: participant -> dose level
        changed: set[str] = set()
        for notification in notifications:
            event = self.app.mapper.to_domain_event(notification)
            trial_id = _trial_id(event)
            if trial_id is None:
                continue
            if trial_id not in trials:
                trials[trial_id] = self._trial(trial_id)
                doses_of[trial_id] = {
                    f.participant_id: f.dose_level
                    for f in trials[trial_id].facts
                    if f.kind == "window_opened" and f.dose_level
                }
            trial = trials[trial_id]
            for fact in facts_from(event, doses_of[trial_id]):  # keeps doses_of current
                if trial.observe(fact, read_through=read_through):
                    changed.add(trial_id)
        doses: list[DoseLevel] = []
        for trial_id in sorted(changed):
            tallies = trials[trial_id].evaluate(self._protocol(trial_id))
            for dose_level, tally in sorted(tallies.items()):
                aggregate = self._dose_level(trial_id, dose_level)
                aggregate.update(tally)
                doses.append(aggregate)
        pending = [a for a in (*trials.values(), *doses) if a.pending_events]
        tracking = Tracking(MONITOR_TRACKING, read_through)
        self.app.save(*pending, **{TRACKINGS: [tracking]})
        return len(notifications)

    def run_until_idle(self, *, through: int | None = None) -> int:
        total = 0
        while read := self.run_once(through=through):
            total += read
        return total

    def follow(
        self,
        stop: threading.Event,
        poll_seconds: float = 0.2,
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set, polling the log when caught up."""
        follow_log(
            self.run_once, stop, name="trial monitor", poll_seconds=poll_seconds, on_pass=on_pass
        )

    def _trial(self, trial_id: str) -> Trial:
        try:
            trial: Trial = self.app.repository.get(trial_aggregate_id(trial_id))
        except AggregateNotFoundError:
            trial = Trial.open(trial_id)
        return trial

    def _dose_level(self, trial_id: str, dose_level: str) -> DoseLevel:
        try:
            aggregate: DoseLevel = self.app.repository.get(
                dose_level_aggregate_id(trial_id, dose_level)
            )
        except AggregateNotFoundError:
            aggregate = DoseLevel.open(trial_id, dose_level)
        return aggregate

    def _protocol(self, trial_id: str) -> ProtocolParameters:
        try:
            trial_log: TrialLog = self.app.repository.get(TrialLog.id_for(trial_id))
        except AggregateNotFoundError:
            return self.app.protocol
        return trial_log.protocol or self.app.protocol


def _trial_id(event: Any) -> str | None:
    if isinstance(event, Participant.ClinicalEventRecorded | TrialLog.TrialEventRecorded):
        return str(event.event["trial_id"])
    trial_id = getattr(event, "trial_id", None)
    return str(trial_id) if trial_id is not None else None
