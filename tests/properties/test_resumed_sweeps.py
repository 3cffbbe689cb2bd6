"""Property (issue 9): a rule's sweep resumed from the last derivation
(``domain.timeline.Resumable``) gives, after every arrival, exactly what sweeping the
whole timeline afresh gives: CRS (``derive_crs``), CTCAE (``derive_toxicities``) and
febrile neutropenia (``febrile_neutropenia``). Arrivals are late, out of order and
at the same instant as others; concurrent vasopressors make CRS sweep afresh."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.crs import CRSSweep, crs_sweep, derive_crs
from domain.ctcae import CTCAE_INPUT_TYPES, ToxicitySweep, derive_toxicities
from domain.protocol import ProtocolParameters
from domain.screens import FN_INPUT_TYPES, FNSweep, febrile_neutropenia, fn_sweep
from domain.timeline import Resumable, Timeline, TimelineEntry, chronological
from tests.properties.test_arrival_order import FRAME, INFUSION, _to_event, observation

PARAMETERS = ProtocolParameters()
LYMPHODEPLETION = FRAME[1].occurred_at


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(observation, min_size=1, max_size=20),
    order=st.randoms(use_true_random=False),
)
def test_resumed_sweeps_equal_sweeping_afresh(specs, order) -> None:
    events = [_to_event(n + 10, spec) for n, spec in enumerate(specs)]
    order.shuffle(events)
    timeline = Timeline()
    crs: Resumable[CRSSweep] = Resumable(lambda: crs_sweep([(None, PARAMETERS.crs)], INFUSION))
    ctcae: Resumable[ToxicitySweep] = Resumable(lambda: ToxicitySweep("5.0", LYMPHODEPLETION))
    fn: Resumable[FNSweep] = Resumable(
        lambda: fn_sweep(PARAMETERS.febrile_neutropenia, "5.0", INFUSION)
    )
    for seq, event in enumerate([*FRAME, *events]):
        timeline.append(
            TimelineEntry(event.event_id, event.type, event.occurred_at, event.data, seq)
        )
        as_of = max(entry.at for entry in timeline)
        assert derive_crs(
            timeline, PARAMETERS.crs, infusion_at=INFUSION, as_of=as_of, resumable=crs
        ) == derive_crs(timeline, PARAMETERS.crs, infusion_at=INFUSION, as_of=as_of)
        assert tuple(
            ctcae.sweep(timeline, chronological(timeline, CTCAE_INPUT_TYPES)).changes
        ) == derive_toxicities(timeline, version="5.0", lymphodepletion_at=LYMPHODEPLETION)
        assert fn.sweep(timeline, chronological(timeline, FN_INPUT_TYPES)).episodes_as_of(
            as_of
        ) == febrile_neutropenia(
            timeline,
            infusion_at=INFUSION,
            version="5.0",
            params=PARAMETERS.febrile_neutropenia,
            as_of=as_of,
        )
