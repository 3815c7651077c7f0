"""State machines of a signaling connection and of a peer's place in a room."""

from __future__ import annotations

import logging
from enum import Enum

logger = logging.getLogger(__name__)


class IllegalTransition(RuntimeError):
    """A state change that the machine does not allow from its current state."""


class ConnectionState(Enum):
    OPEN = "open"  # upgraded, waiting for join
    JOINING = "joining"  # authenticating and asking the room policy
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"


class PeerState(Enum):
    ACTIVE = "active"  # has a live connection
    AWAY = "away"  # connection lost, inside the reconnect grace window
    GONE = "gone"


CONNECTION_MOVES: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.OPEN: frozenset({ConnectionState.JOINING, ConnectionState.CLOSING}),
    ConnectionState.JOINING: frozenset(
        {ConnectionState.JOINED, ConnectionState.CLOSING}
    ),
    ConnectionState.JOINED: frozenset({ConnectionState.CLOSING}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}

PEER_MOVES: dict[PeerState, frozenset[PeerState]] = {
    PeerState.ACTIVE: frozenset({PeerState.AWAY, PeerState.GONE}),
    PeerState.AWAY: frozenset({PeerState.ACTIVE, PeerState.GONE}),
    PeerState.GONE: frozenset(),
}


def move_connection(
    conn_id: str,
    old: ConnectionState,
    new: ConnectionState,
    *,
    peer: str | None = None,
    room: str | None = None,
) -> ConnectionState:
    """Check and log a connection state change; return the new state."""
    if new not in CONNECTION_MOVES[old]:
        raise IllegalTransition(
            f"connection {conn_id} is {old.value!r} and cannot become {new.value!r}"
        )
    logger.info(
        "conn=%s peer=%s room=%s %s -> %s", conn_id, peer, room, old.value, new.value
    )
    return new


def move_peer(peer_id: str, room: str, old: PeerState, new: PeerState) -> PeerState:
    """Check and log a peer state change; return the new state."""
    if new not in PEER_MOVES[old]:
        raise IllegalTransition(
            f"peer {peer_id} in room {room} is {old.value!r} and cannot become "
            f"{new.value!r}"
        )
    logger.info("peer=%s room=%s %s -> %s", peer_id, room, old.value, new.value)
    return new
