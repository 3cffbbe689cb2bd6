"""One pass over the log for many read models: a fan-out fold.

Each read model names, for a stored-event class, the handler that folds events of
that class (``route``; None: it does not read them). :class:`FanOut` asks each model
once per class and then hands every decoded event to exactly those handlers, so an
event is decoded once however many models read it, and an event no model reads is not
decoded at all (:meth:`FanOut.handlers_for_topic` answers from the stored event's
topic, before decoding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from eventsourcing.utils import resolve_topic

#: Folds one decoded stored event at its log position.
Handler = Callable[[Any, int], None]


class Routed(Protocol):
    def route(self, cls: type) -> Handler | None:
        """The handler of this stored-event class, None when the model ignores it."""


class FanOut:
    """Feeds each stored event to every model that reads its class, in log order."""

    def __init__(self, models: Iterable[Routed]) -> None:
        self.models = tuple({id(model): model for model in models}.values())
        self._by_class: dict[type, tuple[Handler, ...]] = {}
        #: Topic -> handlers, for the topics met so far.
        self.topic_handlers: dict[str, tuple[Handler, ...]] = {}

    def handlers(self, cls: type) -> tuple[Handler, ...]:
        found = self._by_class.get(cls)
        if found is None:
            routes = (model.route(cls) for model in self.models)
            found = self._by_class[cls] = tuple(h for h in routes if h is not None)
        return found

    def handlers_for_topic(self, topic: str) -> tuple[Handler, ...]:
        """The handlers of a stored event's topic (empty: no need to decode it)."""
        found = self.topic_handlers.get(topic)
        if found is None:
            found = self.topic_handlers[topic] = self.handlers(resolve_topic(topic))
        return found

    def apply(self, event: Any, position: int) -> None:
        for handler in self.handlers(type(event)):
            handler(event, position)
