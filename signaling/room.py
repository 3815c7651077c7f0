"""Rooms and the peers in them, as held by one process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from signaling.fanout import Envelope
from signaling.identity import ROLE_RECORDER, Admission, PeerIdentity
from signaling.protocol import Message
from signaling.states import PeerState, move_peer

if TYPE_CHECKING:
    from signaling.connection import Connection


@dataclass(eq=False, kw_only=True)
class PeerSlot:
    """A peer's place in a room; it outlives one connection by the grace."""

    peer_id: str
    room: str
    identity: PeerIdentity
    admission: Admission
    connection: Connection | None = None
    state: PeerState = PeerState.ACTIVE
    audio_muted: bool = False
    video_muted: bool = False
    screen_sharing: bool = False
    grace: asyncio.TimerHandle | None = None

    def move(self, new: PeerState) -> None:
        self.state = move_peer(self.peer_id, self.room, self.state, new)

    def cancel_grace(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None

    @property
    def is_recorder(self) -> bool:
        return self.admission.role == ROLE_RECORDER

    def describe(self) -> Message:
        return {
            "id": self.peer_id,
            "name": self.identity.display_name,
            "role": self.admission.role,
            "audio_muted": self.audio_muted,
            "video_muted": self.video_muted,
            "screen_sharing": self.screen_sharing,
        }

    def media_state(self) -> Message:
        return {
            "audio_muted": self.audio_muted,
            "video_muted": self.video_muted,
            "screen_sharing": self.screen_sharing,
        }


@dataclass(eq=False)
class Room:
    """The peers of one room and the offers that passed between them."""

    name: str
    slots: dict[str, PeerSlot] = field(default_factory=dict)
    by_user: dict[str, str] = field(default_factory=dict)
    offered: set[frozenset[str]] = field(default_factory=set)
    recording: bool = False

    def slot_of(self, user_id: str) -> PeerSlot | None:
        peer_id = self.by_user.get(user_id)
        return None if peer_id is None else self.slots[peer_id]

    def add(self, slot: PeerSlot) -> None:
        self.slots[slot.peer_id] = slot
        self.by_user[slot.identity.user_id] = slot.peer_id

    def remove(self, slot: PeerSlot) -> None:
        self.slots.pop(slot.peer_id, None)
        self.by_user.pop(slot.identity.user_id, None)
        self.forget_pairs(slot.peer_id)

    def forget_pairs(self, peer_id: str) -> None:
        self.offered = {pair for pair in self.offered if peer_id not in pair}

    def others(self, peer_id: str) -> list[Message]:
        return [s.describe() for s in self.slots.values() if s.peer_id != peer_id]

    def has_people(self) -> bool:
        return any(not slot.is_recorder for slot in self.slots.values())

    def deliver(self, envelope: Envelope) -> None:
        """Fanout subscriber: hand a message to the local connections."""
        if envelope.to is not None:
            slot = self.slots.get(envelope.to)
            if slot is not None and slot.connection is not None:
                slot.connection.push(envelope.text)
            return
        for slot in tuple(self.slots.values()):
            if slot.peer_id != envelope.exclude and slot.connection is not None:
                slot.connection.push(envelope.text)
