"""Accounts, roles, password hashing, sessions, API tokens and login throttling."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from commons import stations
from commons.db import Database, index
from commons.errors import Conflict, Invalid, NotFound, RateLimited

logger = logging.getLogger(__name__)

USERS = "users"
SESSIONS = "sessions"
API_TOKENS = "api_tokens"
LOGIN_FAILURES = "login_failures"
THROTTLE_WINDOW = timedelta(minutes=15)
TOKEN_PREFIX = "hy_"

INDEXES = (
    index(USERS, "username", unique=True),
    index(USERS, "station_path"),
    index(USERS, "role", "station_code"),
    index(SESSIONS, "user_id"),
    index(SESSIONS, "absolute_expiry", expire_after_seconds=0),
    index(API_TOKENS, "user_id"),
    index(API_TOKENS, "digest", unique=True),
    index(LOGIN_FAILURES, "key", "at"),
    index(
        LOGIN_FAILURES, "at", expire_after_seconds=int(THROTTLE_WINDOW.total_seconds())
    ),
)

_hasher = PasswordHasher()
USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._@+-]{2,63}$")
MIN_PASSWORD_LENGTH = 10


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, verified against when the account does not
    exist so a wrong username costs as long as a wrong password."""
    # made on first use, not at import: every command line start imports this
    return _hasher.hash(secrets.token_hex(16))


# optional profile fields carried on User.extra: the expert profile, and the
# question boards an expert answers on and leads
EXTRA_FIELDS = (
    "title", "registration_number", "practice_years", "on_duty", "boards",
    "lead_boards",
)  # fmt: skip


class Role(StrEnum):
    ADMIN = "admin"
    CLINICIAN = "clinician"
    EXPERT = "expert"
    COUPLE = "couple"

    @property
    def needs_station(self) -> bool:
        return self in (Role.CLINICIAN, Role.EXPERT)


@dataclass(frozen=True, kw_only=True)
class User:
    """An account as the rest of the code sees it (never the password hash)."""

    id: str
    username: str
    display_name: str
    role: Role
    station_code: str | None
    station_path: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    language: str | None = None
    disabled: bool = False
    email: str | None = None
    phone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> User:
        return cls(
            id=doc["_id"],
            username=doc["username"],
            display_name=doc.get("display_name") or doc["username"],
            role=Role(doc["role"]),
            station_code=doc.get("station_code"),
            station_path=tuple(doc.get("station_path") or ()),
            specialties=tuple(doc.get("specialties") or ()),
            language=doc.get("language"),
            disabled=bool(doc.get("disabled")),
            email=doc.get("email"),
            phone=doc.get("phone"),
            extra={k: doc[k] for k in EXTRA_FIELDS if k in doc},
        )


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(ObjectId())


def token_digest(token: str) -> str:
    """Tokens are stored only as their SHA-256, so a database leak grants nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


# passwords


def check_password_strength(password: str, username: str) -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"at least {MIN_PASSWORD_LENGTH} characters"
    if password.lower() == username.lower():
        return "must differ from the username"
    if len(set(password)) < 4:
        return "too simple: use more different characters"
    return None


async def hash_password(password: str) -> str:
    # argon2 takes tens of milliseconds on purpose: keep it off the event loop
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


# accounts


def normalise_username(username: str) -> str:
    return username.strip().lower()


async def create_user(
    database: Database,
    *,
    username: str,
    password: str,
    role: Role | str,
    station_code: str | None = None,
    display_name: str = "",
    specialties: tuple[str, ...] = (),
    email: str | None = None,
    phone: str | None = None,
    extra: dict[str, Any] | None = None,
) -> User:
    """Create an account; raise Invalid with a message per field, Conflict if taken."""
    username = normalise_username(username)
    errors: dict[str, str] = {}
    try:
        role = Role(role)
    except ValueError:
        errors["role"] = f"unknown role {role!r}; expected one of " + ", ".join(Role)
    if not USERNAME_PATTERN.match(username):
        errors["username"] = (
            "3 to 64 characters: lower-case letters, digits and . _ @ + -"
        )
    weakness = check_password_strength(password, username)
    if weakness:
        errors["password"] = weakness
    path: list[str] = []
    if isinstance(role, Role) and role.needs_station and not station_code:
        errors["station"] = f"a {role} belongs to a station"
    elif station_code:
        try:
            path = await stations.station_path(database, station_code)
        except NotFound:
            errors["station"] = f"no station with code {station_code!r}"
    if errors:
        raise Invalid(errors)

    document = {
        "_id": new_id(),
        "username": username,
        "display_name": display_name.strip() or username,
        "role": str(role),
        "station_code": station_code or None,
        "station_path": path,
        "specialties": list(specialties),
        "email": email,
        "phone": phone,
        "password_hash": await hash_password(password),
        "disabled": False,
        "language": None,
        "created_at": now_utc(),
        **(extra or {}),
    }
    try:
        await database[USERS].insert_one(document)
    except DuplicateKeyError:
        raise Conflict(f"the username {username!r} is taken") from None
    logger.info(
        "user created user=%s role=%s station=%s", document["_id"], role, station_code
    )
    return User.from_document(document)


async def get_user(database: Database, user_id: str) -> User:
    document = await database[USERS].find_one({"_id": user_id})
    if document is None:
        raise NotFound(f"no user with id {user_id!r}")
    return User.from_document(document)


async def find_by_username(database: Database, username: str) -> User | None:
    document = await database[USERS].find_one(
        {"username": normalise_username(username)}
    )
    return None if document is None else User.from_document(document)


async def update_user(
    database: Database, user_id: str, changes: dict[str, Any]
) -> None:
    if "station_code" in changes:
        code = changes["station_code"]
        changes["station_path"] = (
            await stations.station_path(database, code) if code else []
        )
    result = await database[USERS].update_one({"_id": user_id}, {"$set": changes})
    if result.matched_count == 0:
        raise NotFound(f"no user with id {user_id!r}")
    if changes.get("disabled"):
        await end_all_sessions(database, user_id)


async def set_password(database: Database, user_id: str, password: str) -> None:
    user = await get_user(database, user_id)
    weakness = check_password_strength(password, user.username)
    if weakness:
        raise Invalid({"password": weakness})
    await database[USERS].update_one(
        {"_id": user_id},
        {
            "$set": {
                "password_hash": await hash_password(password),
                "password_changed_at": now_utc(),
            }
        },
    )
    await end_all_sessions(database, user_id)
    logger.info("password changed user=%s", user_id)


# login and throttling


class LoginRefused(Exception):
    """Wrong username or password, or a disabled account: one message for all."""


async def authenticate(
    database: Database,
    username: str,
    password: str,
    *,
    address: str,
    per_account: int,
    per_address: int,
) -> User:
    """Check a login; raise RateLimited when throttled, LoginRefused when wrong.

    The attempt is written before it is counted and the password checked, so
    a burst of parallel guesses sees itself and cannot slip past the limit;
    a good password removes its own attempt again.
    """
    username = normalise_username(username)
    attempts = [
        {"_id": new_id(), "key": f"account:{username}", "at": now_utc()},
        {"_id": new_id(), "key": f"address:{address}", "at": now_utc()},
    ]
    await database[LOGIN_FAILURES].insert_many(attempts)
    await _check_throttle(database, username, address, per_account, per_address)
    document = await database[USERS].find_one({"username": username})
    password_hash = (
        document["password_hash"] if document else await asyncio.to_thread(_dummy_hash)
    )
    good = await _verify(password_hash, password)
    if not good or document is None or document.get("disabled"):
        raise LoginRefused
    await database[LOGIN_FAILURES].delete_many(
        {"_id": {"$in": [attempt["_id"] for attempt in attempts]}}
    )
    return User.from_document(document)


async def _check_throttle(
    database: Database, username: str, address: str, per_account: int, per_address: int
) -> None:
    since = now_utc() - THROTTLE_WINDOW
    failures = database[LOGIN_FAILURES]
    for key, limit in (
        (f"account:{username}", per_account),
        (f"address:{address}", per_address),
    ):
        count = await failures.count_documents({"key": key, "at": {"$gte": since}})
        # the current attempt is already counted
        if count > limit:
            raise RateLimited(
                "too many failed logins; wait 15 minutes and try again",
                retry_after_seconds=int(THROTTLE_WINDOW.total_seconds()),
            )


REGISTRATIONS_PER_ADDRESS = 10


async def count_registration(database: Database, address: str) -> None:
    """Limit sign-ups from one address: each tells whether a contact is taken."""
    key = f"register:{address}"
    since = now_utc() - THROTTLE_WINDOW
    attempts = await database[LOGIN_FAILURES].count_documents(
        {"key": key, "at": {"$gte": since}}
    )
    if attempts >= REGISTRATIONS_PER_ADDRESS:
        raise RateLimited(
            "too many registrations from this address; wait 15 minutes",
            retry_after_seconds=int(THROTTLE_WINDOW.total_seconds()),
        )
    await database[LOGIN_FAILURES].insert_one({"key": key, "at": now_utc()})


async def clear_failures(database: Database, username: str) -> None:
    await database[LOGIN_FAILURES].delete_many({"key": f"account:{username}"})


# sessions


@dataclass(frozen=True, kw_only=True)
class Session:
    token: str
    user_id: str
    csrf_token: str
    absolute_expiry: datetime


async def start_session(
    database: Database, user: User, *, address: str, max_hours: int
) -> Session:
    """A fresh session id on every login (rotation), stored only as a digest."""
    token = secrets.token_urlsafe(32)
    session = Session(
        token=token,
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(24),
        absolute_expiry=now_utc() + timedelta(hours=max_hours),
    )
    await database[SESSIONS].insert_one(
        {
            "_id": token_digest(token),
            "user_id": user.id,
            "csrf_token": session.csrf_token,
            "created_at": now_utc(),
            "last_seen_at": now_utc(),
            "absolute_expiry": session.absolute_expiry,
            "address": address,
        }
    )
    logger.info("session started user=%s", user.id)
    return session


async def resume_session(
    database: Database, token: str, *, idle_minutes: int
) -> tuple[User, Session] | None:
    """The user of a live session, refreshing its idle timer; None when expired."""
    digest = token_digest(token)
    document = await database[SESSIONS].find_one({"_id": digest})
    if document is None:
        return None
    now = now_utc()
    idle_limit = document["last_seen_at"] + timedelta(minutes=idle_minutes)
    if now >= document["absolute_expiry"] or now >= idle_limit:
        await database[SESSIONS].delete_one({"_id": digest})
        return None
    user_doc = await database[USERS].find_one({"_id": document["user_id"]})
    if user_doc is None or user_doc.get("disabled"):
        await database[SESSIONS].delete_one({"_id": digest})
        return None
    # write the idle timer at most once a minute, not on every request
    if now - document["last_seen_at"] > timedelta(minutes=1):
        await database[SESSIONS].update_one(
            {"_id": digest}, {"$set": {"last_seen_at": now}}
        )
    session = Session(
        token=token,
        user_id=document["user_id"],
        csrf_token=document["csrf_token"],
        absolute_expiry=document["absolute_expiry"],
    )
    return User.from_document(user_doc), session


async def end_session(database: Database, token: str) -> None:
    await database[SESSIONS].delete_one({"_id": token_digest(token)})


async def end_all_sessions(database: Database, user_id: str) -> None:
    await database[SESSIONS].delete_many({"user_id": user_id})


# personal API tokens


async def create_api_token(
    database: Database, user_id: str, name: str
) -> tuple[str, str]:
    """Return (token id, the token itself); the token is shown once, never stored."""
    await get_user(database, user_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = new_id()
    await database[API_TOKENS].insert_one(
        {
            "_id": token_id,
            "digest": token_digest(token),
            "user_id": user_id,
            "name": name.strip()[:80] or "token",
            "prefix": token[:8],
            "created_at": now_utc(),
            "last_used_at": None,
            "revoked_at": None,
        }
    )
    logger.info("api token created user=%s token=%s", user_id, token_id)
    return token_id, token


async def list_api_tokens(database: Database, user_id: str) -> list[dict[str, Any]]:
    cursor = (
        database[API_TOKENS]
        .find({"user_id": user_id, "revoked_at": None}, {"digest": 0})
        .sort("created_at", -1)
    )
    return [doc async for doc in cursor]


async def revoke_api_token(database: Database, user_id: str, token_id: str) -> None:
    result = await database[API_TOKENS].update_one(
        {"_id": token_id, "user_id": user_id, "revoked_at": None},
        {"$set": {"revoked_at": now_utc()}},
    )
    if result.modified_count == 0:
        raise NotFound(f"no active token {token_id!r}")
    logger.info("api token revoked user=%s token=%s", user_id, token_id)


async def user_for_api_token(database: Database, token: str) -> User | None:
    document = await database[API_TOKENS].find_one(
        {"digest": token_digest(token), "revoked_at": None}
    )
    if document is None:
        return None
    user_doc = await database[USERS].find_one({"_id": document["user_id"]})
    if user_doc is None or user_doc.get("disabled"):
        return None
    await database[API_TOKENS].update_one(
        {"_id": document["_id"]}, {"$set": {"last_used_at": now_utc()}}
    )
    return User.from_document(user_doc)
