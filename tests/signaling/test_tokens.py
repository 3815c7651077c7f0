"""Join tokens and TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from signaling import SignalingConfig
from signaling.tokens import (
    BadJoinTokenSignature,
    ExpiredJoinToken,
    JoinClaim,
    MalformedJoinToken,
    issue_join_token,
    verify_join_token,
)
from signaling.turn import ice_servers, turn_credential

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000


def test_token_round_trip() -> None:
    token = issue_join_token(
        KEY, room="consult-7", peer="cart-3", ttl_seconds=600, now=NOW
    )

    assert token.startswith("v1.")
    claim = verify_join_token(KEY, token, now=NOW + 599)
    assert claim == JoinClaim(room="consult-7", peer="cart-3", expires_at=NOW + 600)


def test_token_payload_and_signature_are_as_documented() -> None:
    token = issue_join_token(KEY, room="r1", peer="p", ttl_seconds=60, now=NOW)
    version, payload, signature = token.split(".")

    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded == {"room": "r1", "peer": "p", "exp": NOW + 60}
    expected = hmac.new(KEY, f"v1.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=") == expected


def test_token_accepts_aware_datetimes() -> None:
    at = datetime.fromtimestamp(NOW, UTC)
    token = issue_join_token(KEY, room="r1", peer="p", ttl_seconds=60, now=at)
    assert verify_join_token(KEY, token, now=at).expires_at == NOW + 60


def test_expired_token() -> None:
    token = issue_join_token(KEY, room="r1", peer="p", ttl_seconds=60, now=NOW)
    with pytest.raises(ExpiredJoinToken) as refused:
        verify_join_token(KEY, token, now=NOW + 60)
    assert str(refused.value) == (
        f"join token for room 'r1' expired at unix time {NOW + 60}; issue a new one"
    )
    assert refused.value.code == "token_expired"


def test_tampered_or_foreign_tokens() -> None:
    token = issue_join_token(KEY, room="r1", peer="p", ttl_seconds=60, now=NOW)
    version, payload, signature = token.split(".")
    other_room = (
        base64.urlsafe_b64encode(
            json.dumps({"room": "r2", "peer": "p", "exp": NOW + 60}).encode()
        )
        .decode()
        .rstrip("=")
    )

    for forged in (
        f"{version}.{other_room}.{signature}",
        issue_join_token(
            b"another key of sixteen", room="r1", peer="p", ttl_seconds=60
        ),
    ):
        with pytest.raises(BadJoinTokenSignature) as refused:
            verify_join_token(KEY, forged, now=NOW)
        assert refused.value.code == "token_invalid"


@pytest.mark.parametrize(
    "token",
    ["", "v1.abc", "v2.a.b", "v1.a.b.c", "v1.é.x", "x" * 2000, "v1.!!!.???"],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(MalformedJoinToken):
        verify_join_token(KEY, token, now=NOW)


def test_signed_but_unreadable_payload_is_malformed() -> None:
    payload = base64.urlsafe_b64encode(b'{"room": 5}').decode().rstrip("=")
    signed = f"v1.{payload}"
    signature = hmac.new(KEY, signed.encode(), hashlib.sha256).digest()
    token = f"{signed}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"
    with pytest.raises(MalformedJoinToken):
        verify_join_token(KEY, token, now=NOW)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"room": "a b"}, "room must be 1-128 characters"),
        ({"peer": ""}, "peer name must be 1-64 characters"),
        ({"ttl_seconds": 0}, "ttl_seconds must be between 1 and 2592000, got 0"),
    ],
)
def test_issue_validates(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"room": "r1", "peer": "p", "ttl_seconds": 60}
    values.update(fields)
    with pytest.raises(ValueError, match=message):
        issue_join_token(KEY, **values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 16 bytes"):
        issue_join_token(b"short", room="r1", peer="p", ttl_seconds=60)


def test_turn_credential_matches_coturn_rest_scheme() -> None:
    credential = turn_credential(
        "north-gate-secret", "p0a1b2c3d4e", ttl_seconds=3600, now=1_700_000_000
    )

    assert credential.username == "1700003600:p0a1b2c3d4e"
    # computed apart from the code: openssl dgst -sha1 -hmac ... -binary | base64
    assert credential.password == "uMKVlfqPL3y+X7Pse3u0bdKSajc="
    digest = hmac.new(b"north-gate-secret", b"1700003600:p0a1b2c3d4e", "sha1").digest()
    assert credential.password == base64.b64encode(digest).decode()
    assert credential.expires_at == 1_700_003_600


def test_ice_servers_come_from_config_only() -> None:
    bare = SignalingConfig(secret_key=KEY)
    assert ice_servers(bare, "p1") == []

    config = SignalingConfig(
        secret_key=KEY,
        stun_urls=("stun:stun.example.cn:3478",),
        turn_urls=(
            "turn:turn.example.cn:3478?transport=udp",
            "turns:turn.example.cn:5349",
        ),
        turn_secret="north-gate-secret",
    )
    assert ice_servers(config, "p0a1b2c3d4e", now=1_700_000_000) == [
        {"urls": ["stun:stun.example.cn:3478"]},
        {
            "urls": [
                "turn:turn.example.cn:3478?transport=udp",
                "turns:turn.example.cn:5349",
            ],
            "username": "1700003600:p0a1b2c3d4e",
            "credential": "uMKVlfqPL3y+X7Pse3u0bdKSajc=",
        },
    ]


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="secret_key must be at least 16 bytes"):
        SignalingConfig(secret_key=b"short")
    with pytest.raises(ValueError, match="turn_urls are set but turn_secret is empty"):
        SignalingConfig(secret_key=KEY, turn_urls=("turn:t.example.cn",))
    with pytest.raises(ValueError, match="stun_urls entry 'http://x'"):
        SignalingConfig(secret_key=KEY, stun_urls=("http://x",))
    with pytest.raises(ValueError, match="max_peers_per_room must be positive"):
        SignalingConfig(secret_key=KEY, max_peers_per_room=0)


def test_aiortc_configuration_is_always_explicit() -> None:
    from signaling.ice import rtc_configuration

    assert rtc_configuration([]).iceServers == []
    configured = rtc_configuration([{"urls": ["stun:stun.example.cn:3478"]}])
    assert [server.urls for server in configured.iceServers or []] == [
        ["stun:stun.example.cn:3478"]
    ]
