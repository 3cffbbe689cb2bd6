"""Property (issue 3, architecture decision 3): a protocol parameter change only
affects derivations after its activation.

A participant's events arrive in some order; after the k-th, a new protocol version
is applied (it is in force after the clinical time reached then: the horizon). Every
grade published for a moment up to that horizon must be what the old version gives,
late data included: the same arrivals under the old version throughout publish the
same grades for those moments. The amendments are the ones a real protocol could make:
CTCAE 5.0 -> 6.0, the CRS hypotension threshold, ICANS/FN resolution times, the ICAHT
early window.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.crs import CRSParameters
from domain.icaht import ICAHTParameters
from domain.icans import ICANSParameters
from domain.participant import Participant
from domain.protocol import ProtocolParameters
from domain.screens import FNParameters
from tests.properties.test_arrival_order import (
    FRAME,
    RECEIVED,
    _grade,
    _to_event,
    observation,
)

BASE = ProtocolParameters()
AMENDMENTS = [
    ProtocolParameters(version="2", ctcae_version="6.0"),
    ProtocolParameters(version="2", crs=CRSParameters(hypotension_sbp_below_mmhg=100.0)),
    ProtocolParameters(version="2", icans=ICANSParameters(resolution_hours=6.0)),
    ProtocolParameters(
        version="2", febrile_neutropenia=FNParameters(afebrile_hours_to_resolve=6.0)
    ),
    ProtocolParameters(version="2", icaht=ICAHTParameters(early_window_days=14)),
    ProtocolParameters(
        version="2",
        ctcae_version="6.0",
        crs=CRSParameters(hypotension_sbp_below_mmhg=100.0),
        icans=ICANSParameters(resolution_hours=6.0),
    ),
]


def _run(events, amendment: ProtocolParameters | None, activate_after: int):
    """Record ``events`` in order, following ``amendment`` after the first
    ``activate_after`` observations; the published grades and the cut-over horizon."""
    participant = Participant.open("NCT07049081", "G79-001", "CN-001", BASE)
    for event in FRAME:
        participant.record(event, RECEIVED)
    horizon: datetime | None = None
    for n, event in enumerate(events):
        if n == activate_after:
            horizon = participant.horizon
            if amendment is not None:
                participant.follow_protocol(amendment)
        participant.record(event, RECEIVED)
    published = {
        term: [(at, grade) for at, _, grade in points]
        for term, points in participant.published.items()
    }
    return published, horizon


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(observation, min_size=2, max_size=14, unique_by=lambda spec: spec[1]),
    order=st.randoms(use_true_random=False),
    cut=st.integers(min_value=1, max_value=13),
    amendment=st.sampled_from(AMENDMENTS),
)
def test_a_protocol_change_does_not_change_grades_before_its_activation(
    specs, order, cut, amendment
):
    events = [_to_event(n + 10, spec) for n, spec in enumerate(specs)]
    order.shuffle(events)  # late data after the activation included
    activate_after = min(cut, len(events) - 1)
    unchanged, horizon = _run(events, None, activate_after)
    amended, same_horizon = _run(events, amendment, activate_after)
    assert horizon == same_horizon and horizon is not None
    for term in set(unchanged) | set(amended):
        before, after = unchanged.get(term, []), amended.get(term, [])
        instants = {at for at, _ in before + after if at <= horizon} | {horizon}
        for at in sorted(instants):
            assert _grade(after, at) == _grade(before, at), (term, at, horizon)
