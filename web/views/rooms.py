"""Video rooms: the room page, "test my connection", and the signaling wiring.

The signaling service knows nothing of consultations. Owners of rooms
register a room policy for a room-id prefix in
``app[keys.SERVICES]["room_policies"]`` (for example ``"consult-"``); rooms
that match no prefix use the open policy, which admits any signed-in user.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from commons import identity as accounts
from commons.settings import Settings
from signaling.config import SignalingConfig, config_from_settings
from signaling.echo import ECHO_PATH, EchoService
from signaling.identity import (
    Admission,
    OpenRoomPolicy,
    PeerIdentity,
    RoomPolicy,
    SessionAuthenticator,
)
from signaling.service import WS_PATH, SignalingService
from signaling.tokens import ROOM_PATTERN
from signaling.turn import ice_servers
from web import keys
from web.context import SESSION_COOKIE, gettext, require_user
from web.render import render_html

logger = logging.getLogger(__name__)

# names under app[keys.SERVICES]
ROOM_POLICIES = "room_policies"
SIGNALING = "signaling"
ECHO = "echo"
RECORDING_SINK = "recording_sink"
# the PrefixRoomPolicy the service consults, kept for the room page
ROOM_POLICY = "room_policy"

TEST_PATH = "/rooms/test/connection"
MAX_DISPLAY_NAME_CHARS = 128


class PrefixRoomPolicy:
    """Asks the policy registered for the longest matching room-id prefix.

    The mapping is read on every admission, so packages set up later can
    still register their prefix.
    """

    def __init__(
        self, policies: Mapping[str, RoomPolicy], *, default: RoomPolicy
    ) -> None:
        self._policies = policies
        self._default = default

    def policy_for(self, room: str) -> RoomPolicy:
        matches = [prefix for prefix in self._policies if room.startswith(prefix)]
        if not matches:
            return self._default
        return self._policies[max(matches, key=len)]

    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        return await self.policy_for(room).admit(room, identity)


class StaffRoomPolicy:
    """Rooms no feature has claimed: staff accounts and join-token peers only.

    Couples register themselves, so an open default would let anyone who
    signs up into staff's ad-hoc rooms and hand them TURN credentials.
    """

    STAFF_ROLES = frozenset({"admin", "clinician", "expert"})

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._open = OpenRoomPolicy()

    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        if not identity.user_id.startswith("token:"):
            user = await self._app[keys.DATABASE][accounts.USERS].find_one(
                {"_id": identity.user_id}, {"role": 1}
            )
            if user is None or user["role"] not in self.STAFF_ROLES:
                return None
        return await self._open.admit(room, identity)


def register_room_policy(app: web.Application, prefix: str, policy: RoomPolicy) -> None:
    """Make ``policy`` decide who joins rooms whose id starts with ``prefix``."""
    if not prefix or not ROOM_PATTERN.fullmatch(prefix):
        raise ValueError(
            f"room policy prefix must be 1-128 of A-Z a-z 0-9 . _ : -, got {prefix!r}"
        )
    _services(app).setdefault(ROOM_POLICIES, {})[prefix] = policy


def signaling_config(settings: Settings) -> SignalingConfig:
    """The signaling settings; the join-token key is derived from the secret
    key exactly as ``huiyun room token`` derives it."""
    return config_from_settings(settings, allowed_origins=allowed_origins(settings))


def allowed_origins(settings: Settings) -> tuple[str, ...]:
    """Origins that may open signaling; empty means the request's own host.

    ``allowed_origins`` is documented as *extra* origins, but SignalingConfig
    accepts only the listed ones once any is given, so the site's own public
    origin is listed first.
    """
    if not settings.public_url and not settings.allowed_origins:
        return ()
    parts = urlsplit(settings.base_url)
    own = f"{parts.scheme}://{parts.netloc}"
    return (own, *(o for o in settings.allowed_origins if o != own))


def session_authenticator() -> SessionAuthenticator:
    """Resolve the ``hy_session`` cookie of an upgrade or echo request."""

    async def authenticate(request: web.Request) -> PeerIdentity | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        settings = request.app[keys.SETTINGS]
        resumed = await accounts.resume_session(
            request.app[keys.DATABASE],
            cookie,
            idle_minutes=settings.session_idle_minutes,
        )
        if resumed is None:
            return None
        user, _session = resumed
        return peer_identity(user)

    return authenticate


def peer_identity(user: accounts.User) -> PeerIdentity:
    name = user.display_name[:MAX_DISPLAY_NAME_CHARS] or user.username
    return PeerIdentity(user_id=user.id, display_name=name)


# -- pages -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RoomPage:
    room: str
    self_name: str
    signaling_path: str
    max_chat_chars: int
    opens_at: datetime | None = None  # the admission starts later


@dataclass(frozen=True, kw_only=True)
class ConnectionTestPage:
    echo_url: str
    ice_servers_json: str


async def room_page(request: web.Request) -> web.Response:
    user = require_user(request)
    room = request.match_info["room"]
    if not ROOM_PATTERN.fullmatch(room):
        raise web.HTTPNotFound()
    # the socket asks again on join; asking here gives a page, not a dead room
    policy = _services(request.app)[ROOM_POLICY]
    admission = await policy.admit(room, peer_identity(user))
    if admission is None:
        logger.info("room page refused room=%s user=%s", room, user.id)
        raise web.HTTPForbidden(text=gettext(request)("You may not join this room."))
    service: SignalingService = _services(request.app)[SIGNALING]
    opens_at = admission.not_before
    page = RoomPage(
        room=room,
        self_name=peer_identity(user).display_name,
        signaling_path=WS_PATH,
        max_chat_chars=service.config.max_chat_chars,
        opens_at=opens_at if opens_at and opens_at > datetime.now(UTC) else None,
    )
    return render_html(request, "rooms/room.html", page=page)


async def connection_test_page(request: web.Request) -> web.Response:
    require_user(request)
    service: SignalingService = _services(request.app)[SIGNALING]
    # the echo is not trickle ICE: the browser needs its ICE servers before
    # it offers, so they come with the page (configured servers only)
    servers = ice_servers(service.config, f"t{secrets.token_hex(5)}")
    page = ConnectionTestPage(echo_url=ECHO_PATH, ice_servers_json=json.dumps(servers))
    return render_html(request, "rooms/connection_test.html", page=page)


# -- wiring --------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Build signaling and the echo peer; register the room routes.

    Calling it twice is harmless: tests add it to an app that may already
    have it.
    """
    services = _services(app)
    if SIGNALING in services:
        return
    policies: dict[str, RoomPolicy] = services.setdefault(ROOM_POLICIES, {})
    policy = PrefixRoomPolicy(policies, default=StaffRoomPolicy(app))
    config = signaling_config(app[keys.SETTINGS])
    authenticate = session_authenticator()
    service = SignalingService(
        config,
        policy=policy,
        authenticate=authenticate,
        recording_sink=services.get(RECORDING_SINK),
    )
    echo = EchoService(config, authenticate=authenticate)
    services.update({ROOM_POLICY: policy, SIGNALING: service, ECHO: echo})
    # add_routes also registers start-up and shutdown: peers get "bye"
    # "shutdown" before the server closes
    service.add_routes(app)
    echo.add_routes(app)
    app.router.add_get(TEST_PATH, connection_test_page, name="connection_test")
    app.router.add_get("/rooms/{room}", room_page, name="room")


def _services(app: web.Application) -> dict[str, Any]:
    services = app.get(keys.SERVICES)
    if services is None:
        services = {}
        app[keys.SERVICES] = services
    return services
