"""The room policy for consultation rooms, named `consult-<consultation id>`.

Signaling knows nothing of consultations: it asks this policy whether an
identity may join. Only the participants get in (the requesting clinician,
the accepting expert and anyone invited into the session), from 15 minutes
before the slot until the consultation leaves `live`. The recorder is asked
for only when the patient's consent covers recording.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from commons.db import Database
from commons.identity import now_utc
from consult import store
from consult.scheduling import Slot
from consult.states import State
from signaling.identity import ROLE_HOST, ROLE_PARTICIPANT, Admission, PeerIdentity

logger = logging.getLogger(__name__)

ROOM_PREFIX = "consult-"
OPEN_STATES = (State.SCHEDULED, State.LIVE)


def room_name(consultation_id: str) -> str:
    return ROOM_PREFIX + consultation_id


def consultation_id_of(room: str) -> str | None:
    if not room.startswith(ROOM_PREFIX):
        return None
    return room[len(ROOM_PREFIX) :] or None


def participant_ids(doc: Mapping[str, Any]) -> frozenset[str]:
    people = {doc.get("requested_by_id"), doc.get("expert_id")}
    people.update(doc.get("participant_ids") or ())
    return frozenset(person for person in people if person)


def admission_for(
    doc: Mapping[str, Any], user_id: str, now: datetime
) -> Admission | None:
    """The policy's decision for one person and one consultation, as of `now`."""
    if doc.get("state") not in OPEN_STATES or user_id not in participant_ids(doc):
        return None
    slot = Slot.from_document(doc["slot"])
    # while scheduled, signaling itself refuses joins before `not_before`,
    # with a message that says when the room opens
    not_before = slot.room_opens_at if doc["state"] == State.SCHEDULED else None
    consent = doc.get("consent") or {}
    return Admission(
        role=ROLE_HOST if user_id == doc.get("expert_id") else ROLE_PARTICIPANT,
        not_before=not_before,
        recording=bool(consent.get("covers_recording")),
    )


class ConsultationRoomPolicy:
    """A signaling RoomPolicy backed by the consultations collection."""

    def __init__(self, database: Callable[[], Database]) -> None:
        # the database opens at application start-up, after routes are set up
        self._database = database

    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        consultation_id = consultation_id_of(room)
        if consultation_id is None or identity.user_id.startswith("token:"):
            return None
        doc = await store.load_for_room(self._database(), consultation_id)
        if doc is None:
            return None
        admission = admission_for(doc, identity.user_id, now_utc())
        logger.info(
            "room admission room=%s user=%s admitted=%s",
            room,
            identity.user_id,
            admission is not None,
        )
        return admission
