"""Delivery of room messages to the room's connections.

Rooms publish through a Fanout so that a later implementation (a message
bus) can reach peers held by other processes. Membership itself is still
kept by each process's service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One serialized message for a room: to one peer, or to all but one."""

    room: str
    text: str
    to: str | None = None  # peer id; None means everyone in the room
    exclude: str | None = None  # peer id left out of a broadcast


Deliver = Callable[[Envelope], None]


class Fanout(Protocol):
    """Carries envelopes from the publishing room to every subscriber."""

    def subscribe(self, room: str, deliver: Deliver) -> None: ...

    def unsubscribe(self, room: str, deliver: Deliver) -> None: ...

    async def publish(self, envelope: Envelope) -> None: ...


class InProcessFanout:
    """Fanout within one process: subscribers are called synchronously."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Deliver]] = {}

    def subscribe(self, room: str, deliver: Deliver) -> None:
        self._subscribers.setdefault(room, []).append(deliver)

    def unsubscribe(self, room: str, deliver: Deliver) -> None:
        subscribers = self._subscribers.get(room, [])
        if deliver in subscribers:
            subscribers.remove(deliver)
        if not subscribers:
            self._subscribers.pop(room, None)

    async def publish(self, envelope: Envelope) -> None:
        for deliver in tuple(self._subscribers.get(envelope.room, ())):
            deliver(envelope)
