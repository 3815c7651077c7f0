"""The in-app inbox (站内信): messages to one user, read in the web interface.

Every feature that tells a user something (a care-plan lesson, a consultation
reminder, an answer to a question) puts a message here; email and SMS are
extra channels on top. One document shape for all of them: ``owner_id``,
``kind``, ``title``, ``text`` (Markdown), ``link``, ``urgent``, ``created_at``,
``read_at``; the pregnancy school's deliveries add their own fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from commons.db import Database, index
from commons.errors import NotFound
from commons.identity import new_id, now_utc

logger = logging.getLogger(__name__)

COLLECTION = "inbox"
INDEXES = (
    index(COLLECTION, "owner_id", "-created_at"),
    index(COLLECTION, "owner_id", "read_at"),
    # one message per source event: a retried send cannot duplicate it
    index(COLLECTION, "dedup_key", unique=True, sparse=True),
)


@dataclass(frozen=True, kw_only=True)
class Message:
    id: str
    user_id: str
    kind: str
    subject: str
    body_markdown: str
    link: str | None
    created_at: datetime
    read_at: datetime | None
    urgent: bool

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Message:
        return cls(
            id=doc["_id"],
            user_id=doc["owner_id"],
            kind=doc.get("kind", ""),
            subject=doc.get("title", ""),
            body_markdown=doc.get("text", ""),
            link=doc.get("link"),
            created_at=doc["created_at"],
            read_at=doc.get("read_at"),
            urgent=bool(doc.get("urgent")),
        )


async def send(
    database: Database,
    *,
    user_id: str,
    kind: str,
    subject: str,
    body_markdown: str = "",
    link: str | None = None,
    urgent: bool = False,
    dedup_key: str | None = None,
) -> str | None:
    """Put a message in a user's inbox; None when dedup_key was already used."""
    document: dict[str, Any] = {
        "_id": new_id(),
        "owner_id": user_id,
        "kind": kind,
        "title": subject[:200],
        "text": body_markdown,
        "link": link,
        "urgent": urgent,
        "created_at": now_utc(),
        "read_at": None,
    }
    if dedup_key is not None:
        document["dedup_key"] = dedup_key
    try:
        await database[COLLECTION].insert_one(document)
    except DuplicateKeyError:
        return None
    logger.info(
        "inbox message message=%s user=%s kind=%s", document["_id"], user_id, kind
    )
    return str(document["_id"])


async def messages(
    database: Database, user_id: str, *, limit: int = 50, offset: int = 0
) -> list[Message]:
    cursor = (
        database[COLLECTION]
        .find({"owner_id": user_id})
        .sort("created_at", -1)
        .skip(offset)
        .limit(limit)
    )
    return [Message.from_document(doc) async for doc in cursor]


async def unread_count(database: Database, user_id: str) -> int:
    return await database[COLLECTION].count_documents(
        {"owner_id": user_id, "read_at": None}
    )


async def mark_read(database: Database, user_id: str, message_id: str) -> Message:
    """Mark one of the user's own messages read; another user's is not found."""
    collection = database[COLLECTION]
    await collection.update_one(
        {"_id": message_id, "owner_id": user_id, "read_at": None},
        {"$set": {"read_at": now_utc()}},
    )
    document = await collection.find_one({"_id": message_id, "owner_id": user_id})
    if document is None:
        raise NotFound(f"no message with id {message_id!r}")
    return Message.from_document(document)
