"""Sending one email over SMTP: the part every feature that mails shares."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Protocol

SMTP_TIMEOUT_SECONDS = 30.0


class SmtpEndpoint(Protocol):
    """What deliver() reads; each feature's frozen mail settings fit it."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def starttls(self) -> bool: ...


class MailError(Exception):
    """The message was not accepted; `permanent` says whether to retry."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def deliver(endpoint: SmtpEndpoint, message: EmailMessage) -> None:
    """Hand one message to the SMTP server; blocking, so call it in a thread."""
    try:
        with smtplib.SMTP(
            endpoint.host, endpoint.port, timeout=SMTP_TIMEOUT_SECONDS
        ) as smtp:
            if endpoint.starttls:
                smtp.starttls()
            if endpoint.username:
                smtp.login(endpoint.username, endpoint.password)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused:
        raise MailError("the mail server refused the address", permanent=True) from None
    except smtplib.SMTPResponseException as exc:
        # 5xx is final, 4xx asks us to come back later
        raise MailError(
            f"SMTP {exc.smtp_code}", permanent=exc.smtp_code >= 500
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(
            f"SMTP unreachable: {type(exc).__name__}", permanent=False
        ) from None
