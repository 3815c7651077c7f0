"""TURN REST API credentials and the ICE server list handed to peers.

coturn with ``use-auth-secret`` accepts ``username = "<expiry>:<user>"`` and
``password = base64(HMAC-SHA1(shared secret, username))`` until the expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from signaling.config import SignalingConfig


@dataclass(frozen=True, kw_only=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int  # unix seconds


def turn_credential(
    secret: str, user: str, *, ttl_seconds: int, now: float | None = None
) -> TurnCredential:
    """Return a TURN REST API credential for ``user`` valid ``ttl_seconds``."""
    if not secret:
        raise ValueError("TURN shared secret is empty; set HUIYUN_TURN_SECRET")
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
    expires_at = int(time.time() if now is None else now) + ttl_seconds
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    password = base64.b64encode(digest).decode("ascii")
    return TurnCredential(username=username, password=password, expires_at=expires_at)


def ice_servers(
    config: SignalingConfig, user: str, *, now: float | None = None
) -> list[dict[str, Any]]:
    """ICE servers in the browser's RTCIceServer shape, from config only."""
    servers: list[dict[str, Any]] = []
    if config.stun_urls:
        servers.append({"urls": list(config.stun_urls)})
    if config.turn_urls:
        credential = turn_credential(
            config.turn_secret, user, ttl_seconds=config.turn_ttl_seconds, now=now
        )
        servers.append(
            {
                "urls": list(config.turn_urls),
                "username": credential.username,
                "credential": credential.password,
            }
        )
    return servers
