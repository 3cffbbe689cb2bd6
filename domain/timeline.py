"""The clinical timeline a participant's grades are derived from."""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Generic, Protocol, Self, TypeVar, overload

from pydantic import BaseModel


@dataclass(frozen=True)
class TimelineEntry:
    """One accepted clinical observation, in force at ``at`` (clinical time).

    ``data`` is the validated data model of the contract for ``type``; ``seq`` is the
    arrival order, which breaks ties between observations at the same instant.
    """

    event_id: str
    type: str
    at: datetime
    data: BaseModel
    seq: int

    @property
    def order(self) -> tuple[datetime, int]:
        return (self.at, self.seq)


#: Clinical order: time, then arrival (``seq`` is unique in a timeline).
_ORDER = attrgetter("at", "seq")
_SEQ = attrgetter("seq")


class Chronological(tuple[TimelineEntry, ...]):
    """Entries already in clinical order (ties in arrival order): what
    :func:`chronological` returns, and takes back without sorting again."""


class Timeline(Sequence[TimelineEntry]):
    """A participant's effective timeline, in arrival order, indexed as it grows.

    The rules are pure functions over the whole timeline, and each wants some types
    in clinical order; a participant's rules run after every new entry. The indexes
    (one per set of types, or grouping, a rule has asked for) are kept as entries
    arrive (mostly in time order: an append), so a rule gets its entries without
    every rule sorting and filtering the whole timeline again
    (:func:`chronological`, :func:`arrived`, :func:`group`). The results are the same
    as sorting and filtering the plain list.
    """

    def __init__(self, entries: Iterable[TimelineEntry] = ()) -> None:
        self._entries: list[TimelineEntry] = []
        self._in_order: list[TimelineEntry] = []
        self._arrived: dict[str, list[TimelineEntry]] = {}
        # Kept from the first request on: types -> their entries in clinical order;
        # (types, key) -> key value -> those entries in clinical order.
        self._ordered: dict[frozenset[str], list[TimelineEntry]] = {}
        self._groupings: dict[
            tuple[frozenset[str], Callable[[TimelineEntry], Hashable]],
            dict[Hashable, list[TimelineEntry]],
        ] = {}
        # Views handed out since the last entry (immutable copies).
        self._views: dict[object, Sequence[TimelineEntry]] = {}
        for entry in entries:
            self.append(entry)

    def append(self, entry: TimelineEntry) -> None:
        self._entries.append(entry)
        self._arrived.setdefault(entry.type, []).append(entry)
        insort(self._in_order, entry, key=_ORDER)
        for types, ordered in self._ordered.items():
            if entry.type in types:
                insort(ordered, entry, key=_ORDER)
        for (types, key), groups in self._groupings.items():
            if entry.type in types:
                insort(groups.setdefault(key(entry), []), entry, key=_ORDER)
        self._views.clear()

    @overload
    def __getitem__(self, index: int) -> TimelineEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[TimelineEntry]: ...

    def __getitem__(self, index: int | slice) -> TimelineEntry | Sequence[TimelineEntry]:
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TimelineEntry]:
        return iter(self._entries)

    def chronological(self, types: Collection[str] | None = None) -> Chronological:
        wanted = None if types is None else frozenset(types)
        view = self._views.get(("chronological", wanted))
        if view is None:
            entries = self._in_order if wanted is None else self._ordered.get(wanted)
            if entries is None:
                assert wanted is not None
                entries = self._ordered[wanted] = [e for e in self._in_order if e.type in wanted]
            view = self._views[("chronological", wanted)] = Chronological(entries)
        assert isinstance(view, Chronological)
        return view

    def arrived(self, types: Collection[str]) -> Sequence[TimelineEntry]:
        wanted = frozenset(types)
        view = self._views.get(("arrived", wanted))
        if view is None:
            lists = [self._arrived[t] for t in wanted if t in self._arrived]
            view = self._views[("arrived", wanted)] = (
                tuple(lists[0])
                if len(lists) == 1
                else tuple(sorted((e for entries in lists for e in entries), key=_SEQ))
            )
        return view

    def group(
        self, types: Collection[str], key: Callable[[TimelineEntry], Hashable], value: Hashable
    ) -> Chronological:
        index = (frozenset(types), key)
        groups = self._groupings.get(index)
        if groups is None:
            groups = self._groupings[index] = {}
            for entry in self.chronological(types):
                groups.setdefault(key(entry), []).append(entry)
        view = self._views.get(("group", index, value))
        if view is None:
            view = self._views[("group", index, value)] = Chronological(groups.get(value, ()))
        assert isinstance(view, Chronological)
        return view


class Sweep(Protocol):
    """A rule's state over entries in clinical order, one entry at a time."""

    def observe(self, entry: TimelineEntry) -> None: ...

    def copy(self) -> Self:
        """A state that later observations to either leave the other unchanged."""
        ...


S = TypeVar("S", bound=Sweep)


class Resumable(Generic[S]):
    """A sweep kept between derivations, resumed where it stopped.

    A participant's rules run after every new entry, and entries mostly arrive in
    clinical order: the state after the entries already swept is then unchanged, and
    only the new ones need sweeping. :meth:`sweep` resumes when the entries it swept
    last time are still the first of ``entries`` and come from the same ``source``
    (a :class:`Timeline`, which only grows: a corrected or voided record makes a new
    one); it sweeps afresh otherwise. An entry that arrived late among them moves
    the last one swept from its place, which is how a late entry is noticed. The
    result is the same as sweeping every entry afresh (the tests compare the two).
    """

    def __init__(self, start: Callable[[], S]) -> None:
        self._start = start
        self._state: S | None = None
        self._source: object = None
        self._swept = 0
        self._last: TimelineEntry | None = None

    def sweep(self, source: object, entries: Sequence[TimelineEntry]) -> S:
        """The state after ``entries`` (a copy: finishing it changes nothing kept)."""
        done = self._swept
        state = self._state
        if (
            state is None
            or source is not self._source
            or done > len(entries)
            or (done > 0 and entries[done - 1] is not self._last)
        ):
            state = self._state = self._start()
            self._source = source
            done = 0
        for entry in entries[done:]:
            state.observe(entry)
        self._swept = len(entries)
        self._last = entries[-1] if entries else None
        return state.copy()


def chronological(
    timeline: Iterable[TimelineEntry], types: Collection[str] | None = None
) -> Chronological:
    """The entries of ``types`` (every entry, without), in clinical order with ties in
    arrival order: ``sorted`` by (``at``, ``seq``), kept by a :class:`Timeline`."""
    if isinstance(timeline, Timeline):
        return timeline.chronological(types)
    if isinstance(timeline, Chronological):
        return timeline if types is None else Chronological(e for e in timeline if e.type in types)
    selected = timeline if types is None else (e for e in timeline if e.type in types)
    return Chronological(sorted(selected, key=_ORDER))


def group(
    timeline: Iterable[TimelineEntry],
    types: Collection[str],
    key: Callable[[TimelineEntry], Hashable],
    value: Hashable,
) -> Chronological:
    """The entries of ``types`` whose ``key`` is ``value``, in clinical order (a
    :class:`Timeline` keeps each grouping it was asked for)."""
    if isinstance(timeline, Timeline):
        return timeline.group(types, key, value)
    return Chronological(e for e in chronological(timeline, types) if key(e) == value)


def arrived(timeline: Iterable[TimelineEntry], types: Collection[str]) -> Sequence[TimelineEntry]:
    """The entries of ``types`` in the timeline's order (a :class:`Timeline`'s: arrival)."""
    if isinstance(timeline, Timeline):
        return timeline.arrived(types)
    return tuple(e for e in timeline if e.type in types)


@dataclass(frozen=True)
class AdjudicationQuestion:
    """A question the rules cannot answer alone (reference §9)."""

    key: str
    at: datetime
    question: str
    target: dict[str, str]
    evidence: tuple[str, ...]


def study_day(at: datetime, infusion_at: datetime, *, day_zero_is_infusion_day: bool) -> int:
    """The protocol study day of ``at`` (reference §0.5).

    Days are calendar days in the infusion's UTC offset: the infusion's calendar day
    is Day 0 (or Day 1), the day before it Day -1 (there is no Day 0 under the Day 1
    convention, as in oncology protocols that count D-1, D1).
    """
    local = at.astimezone(infusion_at.tzinfo)
    delta = (local.date() - infusion_at.date()).days
    if day_zero_is_infusion_day or delta < 0:
        return delta
    return delta + 1
