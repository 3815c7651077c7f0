"""WebSocket signaling for WebRTC rooms, join tokens, TURN credentials,
the aiortc peer, the recorder and the echo peer.

Depends on aiohttp, aiortc and av only; rooms are owned elsewhere and
described to this package by a RoomPolicy.
"""

from signaling.config import (
    SignalingConfig,
    config_from_settings,
    derive_token_key,
    split_urls,
)
from signaling.echo import ECHO_PATH, EchoService
from signaling.fanout import Envelope, Fanout, InProcessFanout
from signaling.identity import (
    ROLE_HOST,
    ROLE_PARTICIPANT,
    ROLE_RECORDER,
    Admission,
    OpenRoomPolicy,
    PeerIdentity,
    RoomPolicy,
    SessionAuthenticator,
    no_session,
)
from signaling.recorder import DirectorySink, Recording, RecordingSink
from signaling.service import WS_PATH, SignalingService
from signaling.tokens import (
    JoinClaim,
    JoinTokenError,
    issue_join_token,
    verify_join_token,
)
from signaling.turn import TurnCredential, turn_credential

__all__ = [
    "ECHO_PATH",
    "ROLE_HOST",
    "ROLE_PARTICIPANT",
    "ROLE_RECORDER",
    "WS_PATH",
    "Admission",
    "DirectorySink",
    "EchoService",
    "Envelope",
    "Fanout",
    "InProcessFanout",
    "JoinClaim",
    "JoinTokenError",
    "OpenRoomPolicy",
    "PeerIdentity",
    "Recording",
    "RecordingSink",
    "RoomPolicy",
    "SessionAuthenticator",
    "SignalingConfig",
    "SignalingService",
    "TurnCredential",
    "config_from_settings",
    "derive_token_key",
    "issue_join_token",
    "no_session",
    "split_urls",
    "turn_credential",
    "verify_join_token",
]
