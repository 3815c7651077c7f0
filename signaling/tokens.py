"""Join tokens: HMAC-signed, room-bound, peer-named and expiring.

Format ``v1.<payload>.<signature>``: base64url without padding; the payload
is compact JSON ``{"room", "peer", "exp"}`` and the signature is
HMAC-SHA256 over the ASCII bytes ``v1.<payload>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime

TOKEN_VERSION = "v1"
MAX_TTL_SECONDS = 30 * 24 * 3600
ROOM_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PEER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_TOKEN_CHARS = 1024


class JoinTokenError(ValueError):
    """A join token was refused; ``code`` is the signaling error code."""

    code = "token_invalid"


class MalformedJoinToken(JoinTokenError):
    """The token does not have the v1 shape or its payload is unreadable."""


class BadJoinTokenSignature(JoinTokenError):
    """The signature does not match: another key, or a tampered token."""


class ExpiredJoinToken(JoinTokenError):
    """The token is past its expiry."""

    code = "token_expired"


@dataclass(frozen=True, kw_only=True)
class JoinClaim:
    """What a valid token says: this peer may join this room until then."""

    room: str
    peer: str
    expires_at: int  # unix seconds


def issue_join_token(
    secret: bytes,
    *,
    room: str,
    peer: str,
    ttl_seconds: int,
    now: float | datetime | None = None,
) -> str:
    """Return a token letting ``peer`` join ``room`` for ``ttl_seconds``."""
    _check_secret(secret)
    check_room_name(room)
    check_peer_name(peer)
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(
            f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds!r}"
        )
    expires_at = int(_unix(now)) + int(ttl_seconds)
    payload = {"room": room, "peer": peer, "exp": expires_at}
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signed = f"{TOKEN_VERSION}.{body}"
    return f"{signed}.{_b64encode(_sign(secret, signed))}"


def verify_join_token(
    secret: bytes, token: str, *, now: float | datetime | None = None
) -> JoinClaim:
    """Check a token's signature and expiry and return its claim."""
    _check_secret(secret)
    signed, signature = _split(token)
    if not hmac.compare_digest(_sign(secret, signed), signature):
        raise BadJoinTokenSignature(
            "join token signature does not match; issue a new token with "
            "'huiyun room token' on this server"
        )
    claim = _read_payload(signed.split(".", 1)[1])
    if claim.expires_at <= _unix(now):
        raise ExpiredJoinToken(
            f"join token for room {claim.room!r} expired at unix time "
            f"{claim.expires_at}; issue a new one"
        )
    return claim


def check_room_name(room: str) -> None:
    if not isinstance(room, str) or not ROOM_PATTERN.fullmatch(room):
        raise ValueError(
            f"room must be 1-128 characters from A-Z a-z 0-9 . _ : -, got {room!r}"
        )


def check_peer_name(peer: str) -> None:
    if not isinstance(peer, str) or not PEER_PATTERN.fullmatch(peer):
        raise ValueError(
            f"peer name must be 1-64 characters from A-Z a-z 0-9 . _ -, got {peer!r}"
        )


def _split(token: str) -> tuple[str, bytes]:
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
        raise MalformedJoinToken("join token must be a string of at most 1024 chars")
    if not token.isascii():
        raise MalformedJoinToken("join token must be ASCII (base64url parts)")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        raise MalformedJoinToken(
            f"join token must look like 'v1.<payload>.<signature>', got "
            f"{len(parts)} part(s) starting {parts[0][:8]!r}"
        )
    return f"{parts[0]}.{parts[1]}", _b64decode(parts[2])


def _read_payload(body: str) -> JoinClaim:
    try:
        payload = json.loads(_b64decode(body))
        claim = JoinClaim(
            room=payload["room"], peer=payload["peer"], expires_at=payload["exp"]
        )
    except (ValueError, KeyError, TypeError):
        raise MalformedJoinToken("join token payload is not readable JSON") from None
    if not isinstance(claim.expires_at, int):
        raise MalformedJoinToken("join token 'exp' must be an integer")
    try:
        check_room_name(claim.room)
        check_peer_name(claim.peer)
    except ValueError as exc:
        raise MalformedJoinToken(f"join token payload: {exc}") from None
    return claim


def _sign(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ValueError("join token secret must be at least 16 bytes")


def _unix(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError(f"now must be timezone-aware: {now!r}")
        return now.timestamp()
    return float(now)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise MalformedJoinToken("join token part is not base64url") from None
