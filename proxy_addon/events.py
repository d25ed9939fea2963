"""Recent events for the operator's console: refreshes, retries, failures, with their times.

A small ring buffer, safe to write from the worker threads that call the IdP. Messages may quote
an IdP's own words; whoever shows them scrubs the config's secrets first. Never give it a token.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Event", "EventLog"]


class Event(NamedTuple):
    at: float  # epoch seconds
    kind: str  # refresh | idp_error | needs_login | retry | token_failure | refused
    credential: str
    message: str
    # The same event, repeated back to back, is kept once with a count (the name shadows
    # tuple.count, which nobody calls on an Event).
    count: int = 1  # type: ignore[assignment]

    def as_dict(self) -> dict[str, object]:
        return self._asdict()


class EventLog:
    def __init__(self, size: int = 50, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, kind: str, credential: str, message: str) -> None:
        """Add an event; a repeat of the newest one only bumps its count and time, so a client
        retrying in a loop cannot push everything else off the list."""
        with self._lock:
            last = self._events[-1] if self._events else None
            if last is not None and (last.kind, last.credential, last.message) == (
                kind, credential, message,
            ):  # fmt: skip
                self._events[-1] = last._replace(at=self._clock(), count=last.count + 1)
            else:
                self._events.append(Event(self._clock(), kind, credential, message))

    def recent(self, limit: int | None = None) -> list[Event]:
        """Newest first."""
        with self._lock:
            events = list(self._events)
        events.reverse()
        return events[:limit] if limit is not None else events
