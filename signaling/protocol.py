"""Signaling protocol version 1: message validation, error and close codes.

Pure functions and values only; docs/signaling.md is the reference.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any

from signaling.tokens import ROOM_PATTERN

PROTOCOL_VERSION = 1
SUBPROTOCOL = "huiyun.signaling.v1"

Message = dict[str, Any]


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BAD_VERSION = "bad_version"
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    NOT_IN_ROOM = "not_in_room"
    CANDIDATE_BEFORE_OFFER = "candidate_before_offer"
    MESSAGE_TOO_BIG = "message_too_big"
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_ROOM_MISMATCH = "token_room_mismatch"
    FORBIDDEN = "forbidden"
    TOO_EARLY = "too_early"
    TOO_LATE = "too_late"
    ROOM_FULL = "room_full"
    TOO_MANY_ROOMS = "too_many_rooms"
    JOIN_TIMEOUT = "join_timeout"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    JOIN_TIMEOUT = 4408
    REPLACED = 4409
    ADMISSION_ENDED = 4410
    LIMIT_REACHED = 4429


# Error codes that end the connection, with the close code to use.
CLOSING_ERRORS: dict[ErrorCode, CloseCode] = {
    ErrorCode.UNAUTHENTICATED: CloseCode.UNAUTHENTICATED,
    ErrorCode.TOKEN_INVALID: CloseCode.UNAUTHENTICATED,
    ErrorCode.TOKEN_EXPIRED: CloseCode.UNAUTHENTICATED,
    ErrorCode.TOKEN_ROOM_MISMATCH: CloseCode.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: CloseCode.FORBIDDEN,
    ErrorCode.TOO_EARLY: CloseCode.FORBIDDEN,
    ErrorCode.TOO_LATE: CloseCode.FORBIDDEN,
    ErrorCode.ROOM_FULL: CloseCode.LIMIT_REACHED,
    ErrorCode.TOO_MANY_ROOMS: CloseCode.LIMIT_REACHED,
    ErrorCode.JOIN_TIMEOUT: CloseCode.JOIN_TIMEOUT,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
}

DIRECTED_TYPES = frozenset({"offer", "answer", "candidate", "restart"})
CLIENT_TYPES = frozenset(
    {"join", "chat", "mute", "leave", "ping", "pong"} | DIRECTED_TYPES
)
MUTE_FIELDS = ("audio_muted", "video_muted", "screen_sharing")
_MAX_PEER_ID_CHARS = 64


class ProtocolError(Exception):
    """A client message broke the protocol; answered with an ``error``."""

    def __init__(self, code: ErrorCode, message: str, *, ref: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def to_message(self) -> Message:
        out: Message = {
            "type": "error",
            "code": str(self.code),
            "message": self.message,
        }
        if self.ref is not None:
            out["ref"] = self.ref
        return out


def encode(message: Message) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def parse_client_message(text: str, *, max_chat_chars: int) -> Message:
    """Decode and validate one client frame; return a clean message dict.

    Only the fields of the type's definition are kept, so nothing a client
    adds is ever relayed.
    """
    data = _decode(text)
    kind = data.get("type")
    if kind is None:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "message has no 'type' field")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {kind!r}; expected one of "
            f"{', '.join(sorted(CLIENT_TYPES))}",
        )
    return _VALIDATORS[kind](data, max_chat_chars)


def _decode(text: str) -> Message:
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError(
            ErrorCode.BAD_JSON, "frame is not valid JSON; send one JSON object"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            f"frame must be a JSON object, got {type(data).__name__}",
        )
    return data


def _require(data: Message, field: str, kinds: type | tuple[type, ...]) -> Any:
    kind = data["type"]
    if field not in data:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            f"{kind!r} message needs a {field!r} field",
            ref=kind,
        )
    value = data[field]
    if not isinstance(value, kinds) or isinstance(value, bool) and kinds is not bool:
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"{kind!r} field {field!r} has the wrong type: {type(value).__name__}",
            ref=kind,
        )
    return value


def _bad(kind: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, message, ref=kind)


def _join(data: Message, max_chat_chars: int) -> Message:
    version = _require(data, "v", int)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f'protocol version {version!r} is not supported; send "v": 1',
            ref="join",
        )
    room = _require(data, "room", str)
    if not ROOM_PATTERN.fullmatch(room):
        raise _bad("join", f"room must be 1-128 of A-Z a-z 0-9 . _ : -, got {room!r}")
    out: Message = {"type": "join", "v": version, "room": room}
    if data.get("token") is not None:
        out["token"] = _require(data, "token", str)
    keep = data.get("keep_connections", False)
    if not isinstance(keep, bool):
        raise _bad("join", "'keep_connections' must be true or false")
    out["keep_connections"] = keep
    return out


def _directed(data: Message) -> Message:
    kind = data["type"]
    to = _require(data, "to", str)
    if not 0 < len(to) <= _MAX_PEER_ID_CHARS:
        raise _bad(kind, f"'to' must be a peer id, got {to[:70]!r}")
    return {"type": kind, "to": to}


def _description(data: Message, max_chat_chars: int) -> Message:
    out = _directed(data)
    sdp = _require(data, "sdp", str)
    if not sdp:
        raise _bad(out["type"], f"{out['type']!r} field 'sdp' must not be empty")
    out["sdp"] = sdp
    return out


def _candidate(data: Message, max_chat_chars: int) -> Message:
    out = _directed(data)
    if "candidate" not in data:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            "'candidate' message needs a 'candidate' field (an object, or null "
            "for end of candidates)",
            ref="candidate",
        )
    raw = data["candidate"]
    out["candidate"] = None if raw is None else _candidate_init(raw)
    return out


def _candidate_init(raw: Any) -> Message:
    if not isinstance(raw, dict):
        raise _bad("candidate", "'candidate' must be an object or null")
    text = raw.get("candidate")
    mid = raw.get("sdpMid")
    index = raw.get("sdpMLineIndex")
    fragment = raw.get("usernameFragment")
    if not isinstance(text, str):
        raise _bad("candidate", "'candidate.candidate' must be a string")
    if mid is not None and not isinstance(mid, str):
        raise _bad("candidate", "'candidate.sdpMid' must be a string or null")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise _bad("candidate", "'candidate.sdpMLineIndex' must be an integer or null")
    if mid is None and index is None:
        raise _bad("candidate", "give 'sdpMid' or 'sdpMLineIndex' in 'candidate'")
    if fragment is not None and not isinstance(fragment, str):
        raise _bad("candidate", "'candidate.usernameFragment' must be a string")
    out: Message = {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}
    if fragment is not None:
        out["usernameFragment"] = fragment
    return out


def _restart(data: Message, max_chat_chars: int) -> Message:
    return _directed(data)


def _chat(data: Message, max_chat_chars: int) -> Message:
    text = _require(data, "text", str)
    if not 0 < len(text) <= max_chat_chars:
        raise _bad("chat", f"chat 'text' must be 1-{max_chat_chars} characters")
    out: Message = {"type": "chat", "text": text}
    if data.get("to") is not None:
        out["to"] = _directed(data)["to"]
    return out


def _mute(data: Message, max_chat_chars: int) -> Message:
    out: Message = {"type": "mute"}
    for field in MUTE_FIELDS:
        if field in data:
            out[field] = _require(data, field, bool)
    if len(out) == 1:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            f"'mute' message needs at least one of {', '.join(MUTE_FIELDS)}",
            ref="mute",
        )
    return out


def _bare(data: Message, max_chat_chars: int) -> Message:
    out: Message = {"type": data["type"]}
    if "t" in data:
        out["t"] = _require(data, "t", (int, float))
    return out


_VALIDATORS = {
    "join": _join,
    "offer": _description,
    "answer": _description,
    "candidate": _candidate,
    "restart": _restart,
    "chat": _chat,
    "mute": _mute,
    "leave": _bare,
    "ping": _bare,
    "pong": _bare,
}
