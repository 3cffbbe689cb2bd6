"""Every read model the API serves, as one generation folded in one pass over the log
(architecture decision 7).

The alerts inbox, the safety metrics, the kinetics, the participant registry
(participant -> site), the DSMB packet's data (the dashboard) and the audit trail.
:meth:`Views.fold` decodes each stored event once, and only when some model reads its
class, and hands it to every model that does (``projections.fold``). The DSMB data
shares the kinetics view (the same fold of the same records); it keeps its own alerts
view, so that a defect in one is not hidden by the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.participant import Participant
from projections.alerts import AlertsView
from projections.audit_trail import AuditTrail
from projections.dsmb import DSMBData
from projections.fold import FanOut, Handler
from projections.kinetics import KineticsView
from projections.safety_metrics import SafetyPicture


@dataclass
class Views:
    """One generation of the API's read models, folded up to ``position``."""

    alerts: AlertsView = field(default_factory=AlertsView)
    safety: SafetyPicture = field(default_factory=SafetyPicture)
    kinetics: KineticsView = field(default_factory=KineticsView)
    participants: dict[tuple[str, str], str] = field(default_factory=dict)  # -> site
    dsmb: DSMBData = field(default_factory=DSMBData)
    audit: AuditTrail = field(default_factory=AuditTrail)
    position: int = 0
    _fold: FanOut = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.dsmb.kinetics = self.kinetics
        # No model refers back to this generation: dropped, it is freed at once
        # (not left, a reference cycle, to the cyclic collector).
        registry = _Registry(self.participants, (self.alerts, self.dsmb.alerts))
        self._fold = FanOut((registry, self.safety, self.kinetics, self.dsmb, self.audit))

    def fold(self, notifications: Sequence[Any], decode: Callable[[Any], Any]) -> int:
        """Fold a page of stored events (eventsourcing notifications, in log order);
        ``decode`` makes a domain event of one. The number of events decoded."""
        if not notifications:
            return 0
        known = self._fold.topic_handlers  # looked up inline: this loop is the rebuild
        decoded = 0
        for notification in notifications:
            handlers = known.get(notification.topic)
            if handlers is None:
                handlers = self._fold.handlers_for_topic(notification.topic)
            if handlers:
                event = decode(notification)
                decoded += 1
                position = notification.id
                for handler in handlers:
                    handler(event, position)
        self.advance(notifications[-1].id)
        return decoded

    def apply(self, event: Any, position: int) -> None:
        """Fold one decoded stored event."""
        self._fold.apply(event, position)
        self.advance(position)

    def advance(self, position: int) -> None:
        """Everything up to ``position`` is folded."""
        self.position = max(self.position, position)
        self.dsmb.position = max(self.dsmb.position, position)


class _Registry:
    """The participant registry's fold (who registered at which site), and the
    alerts views' (one validated contract event for both)."""

    def __init__(self, participants: dict[tuple[str, str], str], alerts: tuple[AlertsView, ...]):
        self.participants = participants
        self.alerts = alerts

    def route(self, cls: type) -> Handler | None:
        if issubclass(cls, Participant.Registered):
            return self._registered
        if self.alerts[0].route(cls) is not None:
            return self._alert
        return None

    def _registered(self, event: Any, position: int) -> None:
        self.participants[(event.trial_id, event.participant_id)] = event.site_id

    def _alert(self, event: Any, position: int) -> None:
        contract = event.to_contract()
        for view in self.alerts:
            view.apply(contract, position)
