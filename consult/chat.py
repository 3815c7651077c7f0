"""The consultation's saved chat: short text messages between its participants.

Messages live in their own collection, one document each, so writing one
never races the consultation's version. Everyone who can see the
consultation can read them; only its participants (the requesting clinician,
the accepting expert, anyone invited into the session) post, and only while
the consultation is active.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from commons import audit
from commons.audit import Actor
from commons.db import Database, index
from commons.errors import Conflict, Forbidden
from commons.identity import User, new_id, now_utc
from consult.fields import FieldReader
from consult.room import participant_ids
from consult.states import ACTIVE
from consult.store import KIND

logger = logging.getLogger(__name__)

CHAT = "consult_chat"
INDEXES = (index(CHAT, "consultation_id", "-at"),)
MAX_CHARS = 2000
# a request body larger than this is refused before it is read (413)
MAX_BODY_BYTES = 16 * 1024
# keeps one consultation's chat (and its page) bounded
MAX_MESSAGES = 2000
PAGE_SIZE = 200
OPEN_STATES = ACTIVE


def read_text(values: Mapping[str, Any]) -> str:
    """The message text from submitted values; Invalid names the field."""
    reader = FieldReader(values)
    text = reader.text("text", max_chars=MAX_CHARS, multiline=True)
    reader.finish()
    return text


def may_post(doc: Mapping[str, Any], user: User) -> bool:
    return user.id in participant_ids(doc) and doc.get("state") in OPEN_STATES


def check_poster(doc: Mapping[str, Any], user: User) -> None:
    """Refuse, with the reason, a post by this user to this consultation now."""
    if user.id not in participant_ids(doc):
        raise Forbidden(
            f"only the participants of consultation {doc['_id']} write in its chat"
        )
    if doc.get("state") not in OPEN_STATES:
        allowed = ", ".join(sorted(OPEN_STATES))
        raise Conflict(
            f"consultation {doc['_id']} is {doc.get('state')}; its chat takes "
            f"messages only while it is {allowed}"
        )


async def post(
    database: Database,
    doc: Mapping[str, Any],
    user: User,
    text: str,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Save one message from a participant (callers resolve `doc` in scope)."""
    check_poster(doc, user)
    collection = database[CHAT]
    count = await collection.count_documents({"consultation_id": doc["_id"]})
    if count >= MAX_MESSAGES:
        raise Conflict(
            f"the chat of consultation {doc['_id']} is full ({MAX_MESSAGES} "
            "messages); continue by phone or in the opinion"
        )
    message = {
        "_id": new_id(),
        "consultation_id": doc["_id"],
        "at": now or now_utc(),
        "author_id": user.id,
        "author_name": user.display_name,
        "text": text,
    }
    await collection.insert_one(message)
    await audit.record(
        database,
        actor,
        "consultation.chat_posted",
        object_kind=KIND,
        object_id=doc["_id"],
        detail={"message": message["_id"]},
    )
    logger.info("chat message consultation=%s author=%s", doc["_id"], user.id)
    return message


async def messages(
    database: Database, consultation_id: str, *, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """The latest `limit` messages, oldest first."""
    cursor = (
        database[CHAT]
        .find({"consultation_id": consultation_id})
        .sort([("at", -1), ("_id", -1)])
        .limit(limit)
    )
    latest = [doc async for doc in cursor]
    return latest[::-1]


def message_json(message: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": message["_id"],
        "at": message["at"].isoformat(),
        "author": {"id": message["author_id"], "name": message["author_name"]},
        "text": message["text"],
    }
