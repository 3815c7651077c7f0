"""Telling people about a consultation: the in-app inbox, and email on top.

Notices carry no patient details, only the consultation number, a station
name, a time and a link: email leaves our servers and an inbox may be read
on a shared screen. The inbox's dedup key is the claim on a notice: whoever
inserts the inbox message sends the email, so a rerun or a second process
never mails twice. A crash between the two loses that one email; the inbox
message stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from enum import StrEnum
from typing import Any

from commons import identity, inbox, mail
from commons.db import Database
from commons.identity import Role, User
from commons.settings import Settings

logger = logging.getLogger(__name__)

# (language, English message id) -> the text in that language
Texts = Callable[[str, str], str]


def english(language: str, message: str) -> str:
    """Texts that leave every message in English (tests, command line)."""
    return message


# what a notice says; the web catalogs translate these by value
EMERGENCY_SUBJECT = "Emergency consultation request from %(station)s"
EMERGENCY_BODY = (
    "An emergency remote consultation request (%(number)s) from %(station)s "
    "waits at your station. Open it now: %(url)s"
)
INVITED_SUBJECT = "You are invited to remote consultation %(number)s"
INVITED_BODY = (
    "%(name)s invited you into the video session of remote consultation "
    "%(number)s. Open the consultation page to join: %(url)s"
)


@dataclass(frozen=True, kw_only=True)
class Recipient:
    user_id: str
    email: str | None
    language: str | None

    @classmethod
    def of(cls, user: User) -> Recipient:
        return cls(user_id=user.id, email=user.email, language=user.language)


@dataclass(frozen=True, kw_only=True)
class Notice:
    """One thing to tell: English message ids and the values they name."""

    kind: str
    subject: str
    body: str
    values: Mapping[str, str]
    link: str
    urgent: bool = False

    def render(self, texts: Texts, language: str, **extra: str) -> tuple[str, str]:
        """Subject and body in `language`, with `extra` values (the link)."""
        values = {**self.values, **extra}
        return (
            _fill(texts, language, self.subject, values),
            _fill(texts, language, self.body, values),
        )


def _fill(texts: Texts, language: str, message: str, values: Mapping[str, str]) -> str:
    try:
        return texts(language, message) % values
    except (KeyError, ValueError, TypeError):
        # a translation that lost or broke a placeholder: the English still reads
        logger.warning("translation unusable language=%s message=%r", language, message)
        return message % values


class Delivery(StrEnum):
    """What happened to one notice for one recipient."""

    DUPLICATE = "duplicate"  # sent before: nothing done
    INBOX = "inbox"  # inbox only (no email configured or no address)
    EMAILED = "emailed"
    EMAIL_FAILED = "email_failed"  # inbox yes, email failed
    EMAIL_QUEUED = "email_queued"  # inbox yes, email sending in the background


# email


@dataclass(frozen=True, kw_only=True)
class MailConfig:
    host: str
    port: int
    sender: str
    username: str = ""
    password: str = field(default="", repr=False)
    starttls: bool = False

    @classmethod
    def of(cls, settings: Settings) -> MailConfig | None:
        """The SMTP settings, or None when `smtp_host` is empty (no email)."""
        if not settings.smtp_host:
            return None
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )


class MailFailure(Exception):
    """The mail server could not take the message; the text says why."""


class Mailer:
    """Sends plain-text email with the standard library, in a worker thread."""

    def __init__(self, config: MailConfig) -> None:
        self.config = config

    async def send(self, *, to: str, subject: str, text: str, key: str) -> None:
        message = build_email(self.config.sender, to, subject, text, key)
        await asyncio.to_thread(self._deliver, message)

    def _deliver(self, message: EmailMessage) -> None:
        try:
            mail.deliver(self.config, message)
        except mail.MailError as exc:
            raise MailFailure(exc.reason) from None


def build_email(
    sender: str, to: str, subject: str, text: str, key: str
) -> EmailMessage:
    """The message; its Message-ID comes from `key`, so a resend is recognisable."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = to
    message["Date"] = format_datetime(datetime.now(UTC))
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    message["Message-ID"] = make_msgid(idstring=digest, domain="huiyun")
    message.set_content(text)
    return message


# background sends


class TaskSet:
    """Keeps every background send, so shutdown can cancel and await them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background notice failed", exc_info=task.exception())

    async def wait(self) -> None:
        """Let the sends started so far finish."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        await self.wait()


# sending


class Notifier:
    """Puts notices in the inbox and, when email is configured, mails them.

    With `background`, emails go out in tracked tasks and `send` returns once
    the inbox holds the message; without it, `send` waits for the email.
    """

    def __init__(
        self,
        database: Database,
        *,
        texts: Texts,
        base_url: str,
        default_language: str,
        mailer: Mailer | None = None,
        background: TaskSet | None = None,
    ) -> None:
        self.database = database
        self.texts = texts
        self.base_url = base_url.rstrip("/")
        self.default_language = default_language
        self.mailer = mailer
        self.background = background

    async def send(
        self, recipient: Recipient, notice: Notice, *, dedup_key: str
    ) -> Delivery:
        language = recipient.language or self.default_language
        url = self.base_url + notice.link
        subject, body = notice.render(self.texts, language, url=url)
        message_id = await inbox.send(
            self.database,
            user_id=recipient.user_id,
            kind=notice.kind,
            subject=subject,
            body_markdown=body,
            link=notice.link,
            urgent=notice.urgent,
            dedup_key=dedup_key,
        )
        if message_id is None:
            return Delivery.DUPLICATE
        if self.mailer is None or not recipient.email:
            return Delivery.INBOX
        mail = self._mail(recipient, subject, body, dedup_key)
        if self.background is not None:
            self.background.spawn(_quietly(mail))
            return Delivery.EMAIL_QUEUED
        return await mail

    async def _mail(
        self, recipient: Recipient, subject: str, body: str, key: str
    ) -> Delivery:
        assert self.mailer is not None and recipient.email
        try:
            await self.mailer.send(
                to=recipient.email, subject=subject, text=body, key=key
            )
        except MailFailure as exc:
            logger.warning(
                "notice email failed user=%s key=%s error=%s",
                recipient.user_id,
                key,
                exc,
            )
            return Delivery.EMAIL_FAILED
        logger.info("notice emailed user=%s key=%s", recipient.user_id, key)
        return Delivery.EMAILED


async def _quietly(mail: Coroutine[Any, Any, Delivery]) -> None:
    await mail


# who to tell


async def recipients(database: Database, user_ids: Iterable[str]) -> list[Recipient]:
    """The enabled accounts among `user_ids`, in id order."""
    wanted = sorted(set(user_ids))
    cursor = database[identity.USERS].find(
        {"_id": {"$in": wanted}, "disabled": False},
        {"email": 1, "language": 1},
    )
    found = [
        Recipient(
            user_id=doc["_id"], email=doc.get("email"), language=doc.get("language")
        )
        async for doc in cursor
    ]
    return sorted(found, key=lambda recipient: recipient.user_id)


async def on_duty_experts(database: Database, station_code: str) -> list[Recipient]:
    """The enabled experts of a station whose profile says they are on duty."""
    cursor = database[identity.USERS].find(
        {
            "role": str(Role.EXPERT),
            "station_code": station_code,
            "disabled": False,
            "on_duty": True,
        },
        {"_id": 1},
    )
    return await recipients(database, [doc["_id"] async for doc in cursor])


def number(consultation_id: str) -> str:
    """The short number pages and calendars show for a consultation."""
    return consultation_id[-6:]


async def emergency(
    notifier: Notifier, doc: Mapping[str, Any], station_name: str
) -> int:
    """Tell the target station's on-duty experts (and a named expert) at once.

    The key names the target station, so a request forwarded elsewhere alerts
    the new station's experts too. Returns how many were newly told.
    """
    target = doc["target_station_code"]
    people = await on_duty_experts(notifier.database, target)
    named = doc.get("target_expert_id")
    if named and named not in {person.user_id for person in people}:
        people += await recipients(notifier.database, [named])
    notice = Notice(
        kind="consultation.emergency",
        subject=EMERGENCY_SUBJECT,
        body=EMERGENCY_BODY,
        values={"number": number(doc["_id"]), "station": station_name},
        link=f"/consultations/{doc['_id']}",
        urgent=True,
    )
    told = 0
    for person in people:
        key = f"consult-emergency:{doc['_id']}:{target}:{person.user_id}"
        delivery = await notifier.send(person, notice, dedup_key=key)
        told += delivery is not Delivery.DUPLICATE
    logger.info(
        "emergency notice consultation=%s station=%s told=%d",
        doc["_id"],
        target,
        told,
    )
    return told


async def invited(
    notifier: Notifier, doc: Mapping[str, Any], invitee: User, inviter: User
) -> Delivery:
    """Tell someone they were invited into the consultation's session."""
    notice = Notice(
        kind="consultation.invited",
        subject=INVITED_SUBJECT,
        body=INVITED_BODY,
        values={"number": number(doc["_id"]), "name": inviter.display_name},
        link=f"/consultations/{doc['_id']}",
    )
    key = f"consult-invited:{doc['_id']}:{invitee.id}"
    return await notifier.send(Recipient.of(invitee), notice, dedup_key=key)
