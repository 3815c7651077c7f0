"""Support for the school delivery tests (no tests here): couples enrolled at a
chosen gestational age, a local SMS gateway that checks signatures, a local
SMTP server, and dispatchers wired to them."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import functools
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from commons import identity, stations
from commons.audit import Actor
from commons.db import Database
from commons.identity import User
from school import channels, enrolment, store
from school.channels import Composer, EmailSender, InboxSender, SmsSender, SmtpConfig
from school.delivery import Channel
from school.dispatcher import Dispatcher
from school.store import Library
from tests.helpers import TEST_PASSWORD

SHANGHAI = ZoneInfo("Asia/Shanghai")
XIAOZHAILU = "610113001000"  # 小寨路街道, 雁塔区
DAYANTA = "610113002000"  # 大雁塔街道, 雁塔区
SECRET_KEY = "test-secret-key-0123456789"
GATEWAY_SECRET = "gateway-secret-abcdef"
BASE_URL = "http://127.0.0.1:8080"
SYSTEM = Actor.system("test")


def shanghai(day: str, hour: int, minute: int = 0) -> dt.datetime:
    """An instant given as a Shanghai wall-clock time, in UTC."""
    local = dt.datetime.combine(
        dt.date.fromisoformat(day), dt.time(hour, minute), tzinfo=SHANGHAI
    )
    return local.astimezone(dt.UTC)


@functools.cache
def library() -> Library:
    return Library.load()


async def prepare(database: Database) -> Database:
    await database.ensure_indexes(
        (*stations.INDEXES, *identity.INDEXES, *store.INDEXES)
    )
    await stations.seed_if_empty(database)
    return database


async def couple(
    database: Database,
    username: str,
    *,
    phone: str | None = None,
    email_address: str | None = None,
) -> User:
    return await identity.create_user(
        database,
        username=username,
        password=TEST_PASSWORD,
        role="couple",
        display_name=username,
        phone=phone,
        email=email_address,
    )


def lmp_for(today: dt.date, weeks: int, days: int = 0) -> dt.date:
    return today - dt.timedelta(days=weeks * 7 + days)


async def enrol_at(
    database: Database,
    user: User,
    *,
    now: dt.datetime,
    weeks: int,
    days: int = 0,
    channel_names: Sequence[str] = (),
    station: str = XIAOZHAILU,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Enrol `user` with an LMP giving weeks+days of pregnancy at `now`."""
    today = now.astimezone(SHANGHAI).date()
    values = {
        "stage": "lmp",
        "lmp": lmp_for(today, weeks, days).isoformat(),
        "station_code": station,
        **{f"channel_{name}": "on" for name in channel_names},
        **(extra or {}),
    }
    request = enrolment.parse_request(
        values, now=now, available=(Channel.INBOX, Channel.EMAIL, Channel.SMS)
    )
    return await enrolment.enrol(
        database,
        library(),
        owner_id=user.id,
        station_code=station,
        request=request,
        actor=SYSTEM,
        now=now,
    )


async def deliveries(database: Database, **query: Any) -> list[dict[str, Any]]:
    cursor = database[store.DELIVERIES].find(query).sort("_id", 1)
    return [doc async for doc in cursor]


def composer() -> Composer:
    return Composer(library=library(), base_url=BASE_URL, secret_key=SECRET_KEY)


def dispatcher(
    database: Database,
    *,
    worker_id: str,
    gateway_url: str | None = None,
    smtp_port: int | None = None,
    lease_seconds: int = 300,
) -> Dispatcher:
    senders: dict[Channel, channels.Sender] = {Channel.INBOX: InboxSender(database)}
    if gateway_url:
        senders[Channel.SMS] = SmsSender(gateway_url, GATEWAY_SECRET)
    if smtp_port:
        config = SmtpConfig(host="127.0.0.1", port=smtp_port, sender="school@huiyun")
        senders[Channel.EMAIL] = EmailSender(config)
    return Dispatcher(
        database,
        library(),
        senders,
        composer(),
        worker_id=worker_id,
        lease_seconds=lease_seconds,
    )


# a local SMS gateway


@dataclass
class Gateway:
    """Accepts signed calls, refuses unsigned ones, records what came."""

    secret: str
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            channels.verify_signature(
                self.secret, request.headers, body, now=dt.datetime.now().timestamp()
            )
        except channels.WebhookRejected:
            self.refused += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        message = json.loads(body)
        self.received.append(message)
        return web.json_response({"message_id": f"gw-{len(self.received)}"})

    def ids(self) -> list[str]:
        return [message["id"] for message in self.received]


@asynccontextmanager
async def local_gateway(secret: str = GATEWAY_SECRET) -> AsyncIterator[Gateway]:
    gateway = Gateway(secret)
    app = web.Application()
    app.router.add_post("/sms", gateway.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway.url = f"http://127.0.0.1:{server.port}/sms"
    try:
        yield gateway
    finally:
        await server.close()


# a local SMTP server


class Mailbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def delivery_ids(self) -> list[str]:
        return [str(message["X-Huiyun-Delivery"]) for message in self.messages]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()
