"""Station scope: which objects a user may see, decided in this one place.

Every object that belongs to a station stores ``station_path`` (the codes from
the city down to its station). A clinician at station S sees objects whose
path contains S; the city centre's staff and admins see everything; an expert
also sees objects naming them in ``assigned_expert_ids``; a couple sees only
objects whose ``owner_id`` is theirs. Out-of-scope objects are reported as not
found, so their existence does not leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from commons.db import Database
from commons.errors import NotFound
from commons.identity import Role, User


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What one user may see."""

    user_id: str
    role: Role
    station_code: str | None
    city_wide: bool

    @classmethod
    def of(cls, user: User) -> Scope:
        city_wide = user.role is Role.ADMIN or (
            user.role in (Role.CLINICIAN, Role.EXPERT) and len(user.station_path) == 1
        )
        return cls(
            user_id=user.id,
            role=user.role,
            station_code=user.station_code,
            city_wide=city_wide,
        )

    def filter(
        self, *, path_field: str = "station_path", owner_field: str = "owner_id"
    ) -> dict[str, Any]:
        """A query filter selecting exactly the documents in scope."""
        if self.role is Role.COUPLE:
            return {owner_field: self.user_id}
        if self.city_wide:
            return {}
        station_rule = {path_field: self.station_code}
        if self.role is Role.EXPERT:
            return {"$or": [station_rule, {"assigned_expert_ids": self.user_id}]}
        return station_rule

    def station_filter(self) -> dict[str, Any]:
        """Filter on the stations collection itself (path holds the codes)."""
        if self.city_wide:
            return {}
        if self.station_code is None:
            return {"_id": {"$in": []}}
        return {"path": self.station_code}

    def sees_station(self, document: dict[str, Any]) -> bool:
        """The same rule as station_filter, for a document already in memory."""
        if self.city_wide:
            return True
        return self.station_code is not None and self.station_code in document["path"]

    def restrict(self, query: dict[str, Any], **fields: str) -> dict[str, Any]:
        rule = self.filter(**fields)
        if not rule:
            return query
        if not query:
            return rule
        return {"$and": [query, rule]}


async def find_in_scope(
    database: Database,
    collection: str,
    object_id: Any,
    scope: Scope,
    *,
    kind: str,
    **fields: str,
) -> dict[str, Any]:
    """The document with this id if the scope covers it; NotFound otherwise."""
    document = await database[collection].find_one(
        scope.restrict({"_id": object_id}, **fields)
    )
    if document is None:
        raise NotFound(f"no {kind} with id {object_id!r}")
    return document


async def station_in_scope(
    database: Database, code: str, scope: Scope
) -> dict[str, Any]:
    document = await database["stations"].find_one(
        {"$and": [{"_id": code}, scope.station_filter()]}
        if scope.station_filter()
        else {"_id": code}
    )
    if document is None:
        raise NotFound(f"no station with code {code!r}")
    return document
