"""Property: the indexed :class:`domain.timeline.Timeline` the rules read gives, after
any sequence of arrivals (late, out-of-order and same-instant ones included), exactly
what sorting and filtering the plain list of entries gives (issue 9: the rules stopped
sorting the whole timeline after every event; their results must not change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from domain.timeline import Timeline, TimelineEntry, arrived, chronological, group

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
