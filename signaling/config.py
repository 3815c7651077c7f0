"""Settings of the signaling service, validated when built."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

# A frame this many times over max_message_bytes is refused by the WebSocket
# reader itself (close 1009) instead of being read whole and answered.
HARD_LIMIT_FACTOR = 4


@dataclass(frozen=True, kw_only=True)
class SignalingConfig:
    """Everything the signaling service, its peers and the recorder need."""

    secret_key: bytes  # HMAC key for join tokens
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = ""  # TURN REST API shared secret
    turn_ttl_seconds: int = 3600
    allowed_origins: tuple[str, ...] = ()  # empty: same origin as Host only
    heartbeat_seconds: float = 10.0
    reconnect_grace_seconds: float = 20.0
    join_timeout_seconds: float = 10.0
    close_timeout_seconds: float = 2.0
    max_message_bytes: int = 65536
    max_messages_per_second: int = 50
    max_peers_per_room: int = 8
    max_rooms_per_user: int = 4
    max_errors_per_window: int = 20
    error_window_seconds: float = 10.0
    send_queue_limit: int = 256  # messages queued for one slow consumer
    max_chat_chars: int = 2000
    echo_max_sessions: int = 4
    echo_max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if len(self.secret_key) < 16:
            raise ValueError(
                f"secret_key must be at least 16 bytes, got {len(self.secret_key)}; "
                "set HUIYUN_SECRET_KEY to a long random value"
            )
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls are set but turn_secret is empty")
        self._check_urls("stun_urls", self.stun_urls, ("stun:", "stuns:"))
        self._check_urls("turn_urls", self.turn_urls, ("turn:", "turns:"))
        self._check_positive()

    @staticmethod
    def _check_urls(name: str, urls: tuple[str, ...], schemes: tuple[str, ...]) -> None:
        for url in urls:
            if not url.startswith(schemes):
                raise ValueError(
                    f"{name} entry {url!r} must start with one of {schemes}"
                )

    def _check_positive(self) -> None:
        for name in (
            "turn_ttl_seconds",
            "heartbeat_seconds",
            "reconnect_grace_seconds",
            "join_timeout_seconds",
            "close_timeout_seconds",
            "max_message_bytes",
            "max_messages_per_second",
            "max_peers_per_room",
            "max_rooms_per_user",
            "max_errors_per_window",
            "error_window_seconds",
            "send_queue_limit",
            "max_chat_chars",
            "echo_max_sessions",
            "echo_max_seconds",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

    @property
    def hard_message_bytes(self) -> int:
        return self.max_message_bytes * HARD_LIMIT_FACTOR


def split_urls(value: str) -> tuple[str, ...]:
    """Split a comma-separated settings value into a tuple of URLs."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def derive_token_key(secret_key: str) -> bytes:
    """The join-token HMAC key, derived so it signs nothing else."""
    if not secret_key:
        raise ValueError("secret_key is empty; set HUIYUN_SECRET_KEY")
    label = b"huiyun signaling join tokens v1"
    return hmac.new(secret_key.encode("utf-8"), label, hashlib.sha256).digest()


def config_from_settings(settings: Any, **overrides: Any) -> SignalingConfig:
    """Build the config from huiyun settings (with the secret key resolved).

    ``settings`` needs ``secret_key``, ``stun_urls``, ``turn_urls``,
    ``turn_secret``, ``turn_ttl_seconds`` and ``allowed_origins``.
    """
    values: dict[str, Any] = {
        "secret_key": derive_token_key(settings.secret_key),
        "stun_urls": tuple(settings.stun_urls),
        "turn_urls": tuple(settings.turn_urls),
        "turn_secret": settings.turn_secret,
        "turn_ttl_seconds": int(settings.turn_ttl_seconds),
        "allowed_origins": tuple(settings.allowed_origins),
    }
    values.update(overrides)
    return SignalingConfig(**values)
