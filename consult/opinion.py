"""The expert's opinion (会诊意见): content, signing and amendments.

Signing fixes the content with a SHA-256 over a canonical JSON form that also
binds the consultation, the version, the signer, the time and the previous
version's digest, so versions form a chain. A signed version is never
changed; an amendment is a new signed version that links to the one before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from consult.fields import SHANGHAI, FieldReader

LIMITS = {"assessment": 4000, "recommendations": 4000, "body_markdown": 20000}
MAX_FOLLOW_UP = timedelta(days=730)
HASH_FIELDS_VERSION = 1  # bump if the canonical form ever changes


@dataclass(frozen=True, kw_only=True)
class OpinionContent:
    assessment: str
    recommendations: str
    referral_advised: bool
    follow_up_date: date | None
    body_markdown: str

    def document(self) -> dict[str, Any]:
        return {
            "assessment": self.assessment,
            "recommendations": self.recommendations,
            "referral_advised": self.referral_advised,
            "follow_up_date": (
                self.follow_up_date.isoformat() if self.follow_up_date else None
            ),
            "body_markdown": self.body_markdown,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> OpinionContent:
        follow_up = document.get("follow_up_date")
        return cls(
            assessment=document["assessment"],
            recommendations=document["recommendations"],
            referral_advised=bool(document["referral_advised"]),
            follow_up_date=date.fromisoformat(follow_up) if follow_up else None,
            body_markdown=document.get("body_markdown", ""),
        )


def parse_opinion(values: Mapping[str, Any], *, now: datetime) -> OpinionContent:
    """Validate submitted opinion fields; Invalid names each wrong field."""
    reader = FieldReader(values)
    content = read_opinion(reader, now=now)
    reader.finish()
    return content


def read_opinion(reader: FieldReader, *, now: datetime) -> OpinionContent:
    texts = {
        name: reader.text(
            f"opinion.{name}",
            max_chars=limit,
            required=name != "body_markdown",
            multiline=True,
        )
        for name, limit in LIMITS.items()
    }
    follow_up = reader.day("opinion.follow_up_date", required=False)
    today = now.astimezone(SHANGHAI).date()
    if follow_up is not None and not today <= follow_up <= today + MAX_FOLLOW_UP:
        reader.fail(
            "opinion.follow_up_date",
            f"expected a date from {today} to {today + MAX_FOLLOW_UP}",
        )
    return OpinionContent(
        referral_advised=reader.flag("opinion.referral_advised"),
        follow_up_date=follow_up,
        **texts,
    )


@dataclass(frozen=True, kw_only=True)
class SignedOpinion:
    consultation_id: str
    version: int
    content: OpinionContent
    signed_by_id: str
    signed_by_name: str
    signed_at: datetime
    previous_sha256: str | None
    amendment_reason: str

    def canonical(self) -> bytes:
        """The exact bytes the digest covers (sorted keys, no spaces, UTF-8)."""
        payload = {
            "form": HASH_FIELDS_VERSION,
            "consultation_id": self.consultation_id,
            "version": self.version,
            "content": self.content.document(),
            "signed_by_id": self.signed_by_id,
            "signed_at": _instant(self.signed_at),
            "previous_sha256": self.previous_sha256,
            "amendment_reason": self.amendment_reason,
        }
        return json.dumps(
            payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def document(self) -> dict[str, Any]:
        return {
            "_id": f"{self.consultation_id}:{self.version}",
            "consultation_id": self.consultation_id,
            "version": self.version,
            "content": self.content.document(),
            "signed_by_id": self.signed_by_id,
            "signed_by_name": self.signed_by_name,
            "signed_at": self.signed_at,
            "previous_sha256": self.previous_sha256,
            "amendment_reason": self.amendment_reason,
            "sha256": self.sha256,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> SignedOpinion:
        return cls(
            consultation_id=document["consultation_id"],
            version=int(document["version"]),
            content=OpinionContent.from_document(document["content"]),
            signed_by_id=document["signed_by_id"],
            signed_by_name=document["signed_by_name"],
            signed_at=document["signed_at"],
            previous_sha256=document.get("previous_sha256"),
            amendment_reason=document.get("amendment_reason", ""),
        )


def sign(
    *,
    consultation_id: str,
    content: OpinionContent,
    signer_id: str,
    signer_name: str,
    now: datetime,
    previous: SignedOpinion | None = None,
    amendment_reason: str = "",
) -> SignedOpinion:
    """A new signed version: the first, or an amendment of `previous`."""
    if (previous is None) != (not amendment_reason):
        raise ValueError("an amendment needs a reason, and only an amendment has one")
    return SignedOpinion(
        consultation_id=consultation_id,
        version=1 if previous is None else previous.version + 1,
        content=content,
        signed_by_id=signer_id,
        signed_by_name=signer_name,
        # the database keeps milliseconds: hash exactly what it will return
        signed_at=_to_millisecond(now),
        previous_sha256=previous.sha256 if previous else None,
        amendment_reason=amendment_reason,
    )


def verify(document: Mapping[str, Any]) -> bool:
    """Whether a stored version still matches the digest it was signed with."""
    return SignedOpinion.from_document(document).sha256 == document.get("sha256")


def _to_millisecond(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
