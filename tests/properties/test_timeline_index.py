"""Property: the indexed :class:`domain.timeline.Timeline` the rules read gives, after
any sequence of arrivals (late, out-of-order and same-instant ones included), exactly
what sorting and filtering the plain list of entries gives (issue 9: the rules stopped
sorting the whole timeline after every event; their results must not change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from domain.timeline import Resumable, Timeline, TimelineEntry, arrived, chronological, group

TYPES = ("vitals.recorded", "lab.resulted", "oxygen.changed", "death.reported")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class _Data(BaseModel):
    subject: str


arrivals = st.lists(
    st.tuples(
        st.sampled_from(TYPES),
        st.integers(min_value=-48, max_value=48),  # hours: late and early, ties
        st.sampled_from(("anc", "alt", "temperature")),
    ),
    max_size=60,
)
queries = st.lists(st.frozensets(st.sampled_from(TYPES), min_size=1), min_size=1, max_size=4)


def _subject(entry: TimelineEntry) -> str:
    assert isinstance(entry.data, _Data)
    return entry.data.subject


@settings(max_examples=300, deadline=None)
@given(arrivals=arrivals, queries=queries, asked_after=st.integers(min_value=0, max_value=60))
def test_the_index_equals_sorting_and_filtering(
    arrivals: list[tuple[str, int, str]], queries: list[frozenset[str]], asked_after: int
) -> None:
    timeline = Timeline()
    plain: list[TimelineEntry] = []
    for seq, (type_, hours, subject) in enumerate(arrivals):
        entry = TimelineEntry(
            f"e{seq}", type_, T0 + timedelta(hours=hours), _Data(subject=subject), seq
        )
        timeline.append(entry)
        plain.append(entry)
        # Views asked for part-way are kept up to date by later arrivals.
        if seq == asked_after or seq == len(arrivals) - 1:
            for types in queries:
                assert list(chronological(timeline, types)) == sorted(
                    (e for e in plain if e.type in types), key=lambda e: e.order
                )
                assert list(arrived(timeline, types)) == [e for e in plain if e.type in types]
                for subject_ in ("anc", "alt", "temperature"):
                    assert list(group(timeline, types, _subject, subject_)) == [
                        e
                        for e in sorted(plain, key=lambda e: e.order)
                        if e.type in types and _subject(e) == subject_
                    ]
            assert list(chronological(timeline)) == sorted(plain, key=lambda e: e.order)
            assert list(timeline) == plain
            # The plain-list paths of the same functions agree too.
            for types in queries:
                assert chronological(plain, types) == chronological(timeline, types)
                assert arrived(plain, types) == arrived(timeline, types)


class _Recording:
    """A sweep that records the entries it observed, in order, and counts every
    observation made by it and the sweeps it was copied from (``calls``)."""

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls
        self.seen: list[TimelineEntry] = []

    def observe(self, entry: TimelineEntry) -> None:
        self.calls[0] += 1
        self.seen.append(entry)

    def copy(self) -> _Recording:
        other = _Recording(self.calls)
        other.seen = list(self.seen)
        return other


@settings(max_examples=300, deadline=None)
@given(arrivals=arrivals, types=st.frozensets(st.sampled_from(TYPES), min_size=1))
def test_a_resumed_sweep_equals_sweeping_afresh(
    arrivals: list[tuple[str, int, str]], types: frozenset[str]
) -> None:
    """After every arrival (late, out-of-order and same-instant ones included), the
    resumed sweep has observed exactly the entries in clinical order; when every
    entry arrived in clinical order, each was observed once."""
    timeline = Timeline()
    calls = [0]
    resumable = Resumable(lambda: _Recording(calls))
    in_order = True
    for seq, (type_, hours, subject) in enumerate(arrivals):
        entry = TimelineEntry(
            f"e{seq}", type_, T0 + timedelta(hours=hours), _Data(subject=subject), seq
        )
        before = chronological(timeline, types)
        in_order = in_order and (not before or entry.type not in types or before[-1].at <= entry.at)
        timeline.append(entry)
        entries = chronological(timeline, types)
        state = resumable.sweep(timeline, entries)
        assert state.seen == list(entries)
        state.seen.append(entry)  # changing the copy handed out changes nothing kept
    if in_order:
        assert calls[0] == len(chronological(timeline, types))


def test_a_new_timeline_is_swept_afresh() -> None:
    """A corrected record makes a new timeline whose entries may differ anywhere:
    the kept sweep is not resumed for it, even when its last entry is the same."""
    first = TimelineEntry("e1", "vitals.recorded", T0, _Data(subject="temperature"), 0)
    last = TimelineEntry("e2", "vitals.recorded", T0 + timedelta(hours=1), _Data(subject="x"), 1)
    corrected = TimelineEntry("e1", "vitals.recorded", T0, _Data(subject="corrected"), 0)
    resumable = Resumable(lambda: _Recording([0]))
    before = Timeline([first, last])
    assert resumable.sweep(before, chronological(before)).seen == [first, last]
    after = Timeline([corrected, last])
    assert resumable.sweep(after, chronological(after)).seen == [corrected, last]
