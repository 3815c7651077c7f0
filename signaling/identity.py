"""Who is joining a room, and what the room's owner lets them do there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aiohttp import web

ROLE_HOST = "host"
ROLE_PARTICIPANT = "participant"
ROLE_RECORDER = "recorder"


@dataclass(frozen=True, kw_only=True)
class PeerIdentity:
    """An authenticated party asking to join a room."""

    user_id: str  # account id, or "token:<peer>" for a join-token peer
    display_name: str  # shown to others in the room

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("PeerIdentity.user_id must not be empty")
        if not self.display_name or len(self.display_name) > 128:
            raise ValueError(
                f"PeerIdentity.display_name must be 1-128 characters, "
                f"got {len(self.display_name)}"
            )


@dataclass(frozen=True, kw_only=True)
class Admission:
    """A room policy's yes: the role in the room and when it holds."""

    role: str = ROLE_PARTICIPANT
    not_before: datetime | None = None
    not_after: datetime | None = None
    recording: bool = False

    def __post_init__(self) -> None:
        if not self.role or len(self.role) > 32:
            raise ValueError(f"Admission.role must be 1-32 characters: {self.role!r}")
        for name in ("not_before", "not_after"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"Admission.{name} must be timezone-aware: {value!r}")
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError(
                f"Admission.not_after {self.not_after.isoformat()} must come after "
                f"not_before {self.not_before.isoformat()}"
            )


class SessionAuthenticator(Protocol):
    """Resolves the browser session behind a WebSocket upgrade request."""

    async def __call__(self, request: web.Request) -> PeerIdentity | None: ...


class RoomPolicy(Protocol):
    """Supplied by a room's owner: who may join, in which role, and when."""

    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None: ...


class OpenRoomPolicy:
    """Admits every authenticated identity as a participant (tests, demos)."""

    def __init__(self, *, recording: bool = False) -> None:
        self._recording = recording

    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        return Admission(role=ROLE_PARTICIPANT, recording=self._recording)


async def no_session(request: web.Request) -> PeerIdentity | None:
    """A SessionAuthenticator for services that accept join tokens only."""
    return None
