"""Delivery channels: the in-app inbox, email over SMTP and an SMS/WeChat gateway.

The gateway is reached over a signed HTTP webhook in both directions. A call
carries `X-Huiyun-Timestamp` (Unix seconds) and `X-Huiyun-Signature`
(`sha256=` and the hex HMAC-SHA256, keyed with `sms_webhook_secret`, of the
timestamp, a dot and the raw body), so a captured call cannot be replayed
with a fresh timestamp. Every email carries a signed opt-out link.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Final, Protocol

import aiohttp
import jinja2
from markupsafe import Markup
from pymongo.errors import DuplicateKeyError

from commons import mail, markdown
from commons.db import Database
from commons.settings import Settings
from school.delivery import Channel
from school.store import INBOX, WEBHOOK_REPLAYS, Library

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER: Final = "X-Huiyun-Timestamp"
SIGNATURE_HEADER: Final = "X-Huiyun-Signature"
REPLAY_WINDOW_SECONDS: Final = 300
SMS_MAX_CHARS: Final = 70
GATEWAY_TIMEOUT_SECONDS: Final = 10.0
STOP_WORDS: Final = frozenset({"stop", "td", "t", "退订", "unsubscribe"})


class ChannelFailure(Exception):
    """A send failed; `permanent` failures are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, kw_only=True)
class OutgoingMessage:
    """One rendered message, ready for its channel."""

    delivery_id: str
    enrolment_id: str
    owner_id: str
    item_key: str
    kind: str
    channel: Channel
    language: str
    title: str
    text: str
    lesson_id: str | None = None
    urgent: bool = False
    html: str = ""
    sms_text: str = ""
    address: str | None = None
    opt_out_url: str = ""
    lesson_url: str = ""


@dataclass(frozen=True, kw_only=True)
class Receipt:
    channel: Channel
    reference: str


class Sender(Protocol):
    """What the dispatcher needs of a channel."""

    channel: Channel

    async def send(self, message: OutgoingMessage) -> Receipt: ...

    async def close(self) -> None: ...


# the inbox


class InboxSender:
    """Writes the message into the couple's inbox; its id is the delivery's,
    so a retry after a crash finds the first copy instead of adding one."""

    channel = Channel.INBOX

    def __init__(
        self, database: Database, clock: Callable[[], dt.datetime] | None = None
    ) -> None:
        self.database = database
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def send(self, message: OutgoingMessage) -> Receipt:
        document = {
            "_id": message.delivery_id,
            "owner_id": message.owner_id,
            "enrolment_id": message.enrolment_id,
            "item_key": message.item_key,
            "kind": message.kind,
            "title": message.title,
            "text": message.text,
            "lesson_id": message.lesson_id,
            "urgent": message.urgent,
            "created_at": self.clock(),
            "read_at": None,
        }
        try:
            await self.database[INBOX].insert_one(document)
        except DuplicateKeyError:
            logger.info("inbox message existed delivery=%s", message.delivery_id)
        return Receipt(channel=self.channel, reference=message.delivery_id)

    async def close(self) -> None:
        return None


# email


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    username: str = ""
    password: str = ""
    starttls: bool = False

    @classmethod
    def of(cls, settings: Settings) -> SmtpConfig:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )


class EmailSender:
    """Sends over SMTP with the standard library, in a worker thread."""

    channel = Channel.EMAIL

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, message: OutgoingMessage) -> Receipt:
        if not message.address:
            raise ChannelFailure("the account has no email address", permanent=True)
        email = build_email(message, self.config.sender)
        await asyncio.to_thread(self._deliver, email)
        return Receipt(channel=self.channel, reference=str(email["Message-ID"]))

    def _deliver(self, email: EmailMessage) -> None:
        try:
            mail.deliver(self.config, email)
        except mail.MailError as exc:
            raise ChannelFailure(exc.reason, permanent=exc.permanent) from None

    async def close(self) -> None:
        return None


def build_email(message: OutgoingMessage, sender: str) -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = message.title
    email["From"] = sender
    email["To"] = message.address or ""
    email["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    # the same id on a retry lets a mail system drop a second copy
    digest = hashlib.sha256(message.delivery_id.encode()).hexdigest()[:32]
    email["Message-ID"] = make_msgid(idstring=digest, domain="huiyun")
    email["X-Huiyun-Delivery"] = message.delivery_id
    if message.opt_out_url:
        email["List-Unsubscribe"] = f"<{message.opt_out_url}>"
    email.set_content(message.text)
    if message.html:
        email.add_alternative(message.html, subtype="html")
    return email


# the SMS/WeChat gateway


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, *, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "Content-Type": "application/json",
    }


class WebhookRejected(Exception):
    """An inbound webhook call failed verification; `status` says how."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    window_seconds: int = REPLAY_WINDOW_SECONDS,
) -> str:
    """Check the signature and the timestamp window; return the signature."""
    if not secret:
        raise WebhookRejected("the webhook secret is not configured", status=503)
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not timestamp.isdigit() or not signature:
        raise WebhookRejected(
            f"expected headers {TIMESTAMP_HEADER} (Unix seconds) and "
            f"{SIGNATURE_HEADER} (sha256=<hex HMAC>)",
            status=401,
        )
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise WebhookRejected("the signature does not match the body", status=401)
    if abs(now - int(timestamp)) > window_seconds:
        raise WebhookRejected(
            f"the timestamp {timestamp} is more than {window_seconds} s from now",
            status=401,
        )
    return signature


async def remember_signature(
    database: Database, signature: str, *, now: dt.datetime
) -> None:
    """Refuse a second use of one signature while its timestamp is valid."""
    key = hashlib.sha256(signature.encode()).hexdigest()
    expires = now + dt.timedelta(seconds=2 * REPLAY_WINDOW_SECONDS)
    try:
        await database[WEBHOOK_REPLAYS].insert_one({"_id": key, "expires_at": expires})
    except DuplicateKeyError:
        raise WebhookRejected("this call was already received", status=409) from None


def is_stop(text: str) -> bool:
    return text.strip().lower() in STOP_WORDS


class SmsSender:
    """Posts each message to the gateway webhook, signed."""

    channel = Channel.SMS

    def __init__(
        self, url: str, secret: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self.secret = secret
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: OutgoingMessage) -> Receipt:
        if not message.address:
            raise ChannelFailure("the account has no mobile number", permanent=True)
        body = json.dumps(
            {
                "id": message.delivery_id,
                "to": message.address,
                "text": message.sms_text,
                "language": message.language,
            },
            ensure_ascii=False,
        ).encode()
        headers = signed_headers(self.secret, body, now=self.clock())
        return await self._post(body, headers)

    async def _post(self, body: bytes, headers: dict[str, str]) -> Receipt:
        session = self._session_for_send()
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                status = response.status
                answer = await response.read()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChannelFailure(f"gateway unreachable: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return Receipt(channel=self.channel, reference=_gateway_reference(answer))
        # 408 and 429 and 5xx ask us to come back; any other 4xx is final
        retry = status in (408, 429) or status >= 500
        raise ChannelFailure(f"gateway answered {status}", permanent=not retry)

    def _session_for_send(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=GATEWAY_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _gateway_reference(answer: bytes) -> str:
    try:
        parsed = json.loads(answer)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if isinstance(parsed, dict):
        return str(parsed.get("message_id", ""))[:100]
    return ""


def senders_for(settings: Settings, database: Database) -> dict[Channel, Sender]:
    """The channels this process can use: the inbox always, the others when
    their settings are filled in."""
    senders: dict[Channel, Sender] = {Channel.INBOX: InboxSender(database)}
    if settings.smtp_host:
        senders[Channel.EMAIL] = EmailSender(SmtpConfig.of(settings))
    if settings.sms_webhook_url:
        senders[Channel.SMS] = SmsSender(
            settings.sms_webhook_url, settings.sms_webhook_secret
        )
    return senders


def available_channels(settings: Settings) -> tuple[Channel, ...]:
    channels = [Channel.INBOX]
    if settings.smtp_host:
        channels.append(Channel.EMAIL)
    if settings.sms_webhook_url:
        channels.append(Channel.SMS)
    return tuple(channels)


# opt-out links


def opt_out_token(secret_key: str, enrolment_id: str, channel: Channel) -> str:
    payload = f"{enrolment_id}:{channel}".encode()
    mac = hmac.new(secret_key.encode(), b"opt-out:" + payload, hashlib.sha256)
    return _b64(payload) + "." + _b64(mac.digest()[:18])


def read_opt_out_token(secret_key: str, token: str) -> tuple[str, Channel]:
    """The enrolment and channel a token opts out of; ValueError if forged."""
    encoded, _, signature = token.partition(".")
    try:
        payload = _unb64(encoded)
        expected = hmac.new(
            secret_key.encode(), b"opt-out:" + payload, hashlib.sha256
        ).digest()[:18]
        valid = hmac.compare_digest(_unb64(signature), expected)
        enrolment_id, _, channel = payload.decode().partition(":")
        parsed = Channel(channel)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not an opt-out link of this site") from None
    if not valid or not enrolment_id:
        raise ValueError("not an opt-out link of this site")
    return enrolment_id, parsed


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# rendering Markdown


_LESSON_LINK: Final = re.compile(r"\]\(lesson:([a-z0-9-]+)\)")


def render_markdown(text: str, *, link_base: str = "") -> str:
    """Lesson Markdown to safe HTML; `lesson:<id>` links point at lesson pages."""
    text = _LESSON_LINK.sub(lambda m: f"]({link_base}/school/lessons/{m[1]})", text)
    return markdown.render(text)


# composing messages


_TEXTS: Final = {
    "zh-CN": {
        "window": "时间：{start} 至 {end}",
        "read": "阅读课程：{url}",
        "opt_out": "不想再收到邮件？退订：{url}",
        "opt_out_label": "不想再收到邮件？点此退订",
    },
    "en": {
        "window": "When: {start} to {end}",
        "read": "Read the lesson: {url}",
        "opt_out": "No more emails? Opt out: {url}",
        "opt_out_label": "No more emails? Opt out here",
    },
}
_EMAIL_HTML: Final = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html><html lang="{{ language }}"><body>
<h1>{{ title }}</h1>
<p>{{ text }}</p>
{% if window %}<p>{{ window }}</p>{% endif %}
{{ lesson_html }}
{% if lesson_url %}<p><a href="{{ lesson_url }}">{{ lesson_url }}</a></p>{% endif %}
<hr><p><a href="{{ opt_out_url }}">{{ opt_out }}</a></p>
</body></html>"""
)


@dataclass(frozen=True, kw_only=True)
class Composer:
    """Turns a delivery document into the message for its channel."""

    library: Library
    base_url: str
    secret_key: str

    def compose(self, doc: Mapping[str, Any], address: str | None) -> OutgoingMessage:
        language = "en" if str(doc.get("language", "")).startswith("en") else "zh-CN"
        channel = Channel(doc["channel"])
        title = doc["title_en"] if language == "en" else doc["title"]
        purpose = doc["purpose_en"] if language == "en" else doc["purpose"]
        window = _window(doc, _TEXTS[language])
        opt_out_url = ""
        if channel is Channel.EMAIL:
            token = opt_out_token(self.secret_key, doc["enrolment_id"], channel)
            opt_out_url = f"{self.base_url}/school/unsubscribe/{token}"
        message = OutgoingMessage(
            delivery_id=doc["_id"],
            enrolment_id=doc["enrolment_id"],
            owner_id=doc["owner_id"],
            item_key=doc["item_key"],
            kind=doc["kind"],
            channel=channel,
            language=language,
            title=title,
            text="\n".join(filter(None, (purpose, window))),
            lesson_id=doc.get("lesson_id"),
            urgent=bool(doc.get("urgent")),
            address=address,
            opt_out_url=opt_out_url,
            lesson_url=self._lesson_url(doc.get("lesson_id")),
        )
        if channel is Channel.EMAIL:
            return self._for_email(message, purpose, window)
        if channel is Channel.SMS:
            return replace(message, sms_text=self._sms(doc, title))
        return message

    def _lesson_url(self, lesson_id: str | None) -> str:
        if not lesson_id or lesson_id not in self.library.lessons:
            return ""
        return f"{self.base_url}/school/lessons/{lesson_id}"

    def _for_email(
        self, message: OutgoingMessage, purpose: str, window: str
    ) -> OutgoingMessage:
        texts = _TEXTS[message.language]
        lines = [message.text, ""]
        if message.lesson_url:
            lines += [texts["read"].format(url=message.lesson_url), ""]
        lines.append(texts["opt_out"].format(url=message.opt_out_url))
        lesson_html = ""
        if message.lesson_id and message.lesson_id in self.library.lessons:
            body = self.library.lessons[message.lesson_id].body
            lesson_html = render_markdown(body, link_base=self.base_url)
        html = _EMAIL_HTML.render(
            language=message.language,
            title=message.title,
            text=purpose,
            window=window,
            lesson_html=Markup(lesson_html),
            lesson_url=message.lesson_url,
            opt_out_url=message.opt_out_url,
            opt_out=texts["opt_out_label"],
        )
        return replace(message, text="\n".join(lines), html=html)

    def _sms(self, doc: Mapping[str, Any], title: str) -> str:
        lesson_id = str(doc.get("lesson_id"))
        if doc["kind"] == "lesson" and lesson_id in self.library.lessons:
            # every lesson's summary is written to fit one message
            return _clip(self.library.lessons[lesson_id].meta.summary, SMS_MAX_CHARS)
        window = ""
        if doc.get("ends_on"):
            window = f" {doc['starts_on'][5:]}~{doc['ends_on'][5:]}"
        return _clip(title + window, SMS_MAX_CHARS)


def _window(doc: Mapping[str, Any], texts: Mapping[str, str]) -> str:
    if doc["kind"] not in ("checkup", "phs_visit") or not doc.get("ends_on"):
        return ""
    return texts["window"].format(start=doc["starts_on"], end=doc["ends_on"])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
