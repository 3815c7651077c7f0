"""The dispatcher: claims due deliveries, checks them once more, sends, records.

Any number of dispatchers, in any number of processes, may share a database.
A delivery is claimed with one conditional `update_one` (state claimable and
`available_at` passed) whose `modified_count` says who won; the winner holds
a lease until `available_at`, and a crash mid-send leaves the delivery to be
claimed again when the lease runs out. `find_one_and_update` is avoided on
purpose: it scans the collection on the embedded server (DESIGN.md, Storage).

The process's one APScheduler (`web.jobs`) runs the passes from a single
periodic job; the database, not the scheduler, knows what is due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from commons.db import Database
from commons.identity import USERS
from school import delivery, enrolment
from school.channels import ChannelFailure, Composer, Sender
from school.delivery import Action, Channel, DeliveryState
from school.store import DELIVERIES, ENROLMENTS, Library

logger = logging.getLogger(__name__)

LEASE_SECONDS: Final = 300
BATCH_SIZE: Final = 200
CONCURRENCY: Final = 4
# a pass stops after this many batches even if more keep coming due
MAX_BATCHES_PER_PASS: Final = 1000


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(kw_only=True)
class PassReport:
    """What one dispatch pass did, by outcome."""

    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    retrying: int = 0
    dead: int = 0
    withdrawn: int = 0
    released: int = 0
    lost: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Dispatcher:
    """Sends the due deliveries of one database through a set of channels."""

    def __init__(
        self,
        database: Database,
        library: Library,
        senders: Mapping[Channel, Sender],
        composer: Composer,
        *,
        worker_id: str | None = None,
        lease_seconds: int = LEASE_SECONDS,
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.database = database
        self.library = library
        self.senders = dict(senders)
        self.composer = composer
        self.worker_id = worker_id or new_worker_id()
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._stopping = False

    def request_stop(self) -> None:
        """Finish the delivery in hand, then end the pass."""
        self._stopping = True

    async def run_once(self, *, now: dt.datetime | None = None) -> PassReport:
        """One pass: every delivery due at `now` (default: the clock)."""
        at = now or self.clock()
        report = PassReport()
        for _ in range(MAX_BATCHES_PER_PASS):
            batch = await self._due(at)
            if not batch or self._stopping:
                break
            await self._process_all(batch, at, report)
        if any(report.as_dict().values()):
            logger.info(
                "dispatch pass worker=%s %s",
                self.worker_id,
                " ".join(f"{k}={v}" for k, v in report.as_dict().items()),
            )
        return report

    async def _due(self, now: dt.datetime) -> list[dict[str, Any]]:
        query = {
            "state": {"$in": [str(s) for s in delivery.CLAIMABLE]},
            "available_at": {"$lte": now},
        }
        cursor = (
            self.database[DELIVERIES]
            .find(query)
            .sort("available_at", 1)
            .limit(self.batch_size)
        )
        return [doc async for doc in cursor]

    async def _process_all(
        self, batch: list[dict[str, Any]], now: dt.datetime, report: PassReport
    ) -> None:
        # workers sharing a database each take the batch in their own order,
        # so they collide on fewer claims
        queue = random.sample(batch, len(batch))

        async def work() -> None:
            while queue and not self._stopping:
                report.add(await self.process(queue.pop(), now))

        workers = [asyncio.ensure_future(work()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()

    async def process(self, doc: Mapping[str, Any], now: dt.datetime) -> str:
        """Claim, check, send and record one delivery; the outcome's name."""
        if not await self.claim(doc, now):
            return "lost"
        try:
            return await self.handle_claimed(doc["_id"], now)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the lease runs out and another pass tries again
            logger.exception("delivery crashed delivery=%s", doc["_id"])
            return "lost"

    async def claim(self, doc: Mapping[str, Any], now: dt.datetime) -> bool:
        """Take the lease on one delivery; False when another worker has it."""
        result = await self.database[DELIVERIES].update_one(
            {
                "_id": doc["_id"],
                "state": {"$in": [str(s) for s in delivery.CLAIMABLE]},
                "available_at": {"$lte": now},
            },
            {
                "$set": {
                    "state": str(DeliveryState.CLAIMED),
                    "lease_owner": self.worker_id,
                    "available_at": now + self.lease,
                    "claimed_at": now,
                },
                "$inc": {"attempts": 1},
            },
        )
        if result.modified_count != 1:
            return False
        delivery.transition(
            doc["_id"], doc["state"], DeliveryState.CLAIMED, reason=self.worker_id
        )
        return True

    async def handle_claimed(self, delivery_id: str, now: dt.datetime) -> str:
        """Re-check, send and record a delivery this worker has claimed."""
        doc = await self.database[DELIVERIES].find_one({"_id": delivery_id})
        if not self._still_mine(doc):
            return "lost"
        assert doc is not None
        blocked = await self._enrolment_blocks(doc, now)
        if blocked is not None:
            return blocked
        decision = delivery.decide(
            now=now,
            due=doc["due_at"],
            closes_at=doc.get("closes_at"),
            urgent=bool(doc.get("urgent")),
        )
        if decision.action is Action.SKIP:
            return await self._finish(doc, DeliveryState.SKIPPED, now, decision.reason)
        if decision.action is Action.DEFER:
            assert decision.until is not None
            return await self._release(doc, now, decision.until, decision.reason)
        return await self._send(doc, now)

    def _still_mine(self, doc: Mapping[str, Any] | None) -> bool:
        return (
            doc is not None
            and doc["state"] == DeliveryState.CLAIMED
            and doc.get("lease_owner") == self.worker_id
        )

    async def _enrolment_blocks(
        self, doc: Mapping[str, Any], now: dt.datetime
    ) -> str | None:
        """Re-check, just before sending, that the enrolment still wants this."""
        owner = await self.database[ENROLMENTS].find_one({"_id": doc["enrolment_id"]})
        if owner is None:
            return await self._finish(
                doc, DeliveryState.WITHDRAWN, now, "enrolment_gone"
            )
        status = owner["status"]
        if status != enrolment.EnrolmentStatus.ACTIVE:
            return await self._finish(
                doc, DeliveryState.WITHDRAWN, now, f"enrolment_{status}"
            )
        if owner["plan_version"] != doc.get("plan_version"):
            # a life event is being applied: hand the delivery back and bring
            # the plan up to date (idempotent, so a second run does no harm)
            outcome = await self._release(doc, now, now, "plan_changed")
            await enrolment.sync_deliveries(self.database, self.library, owner, now=now)
            return outcome
        channels = owner["preferences"]["channels"]
        if doc["channel"] not in channels:
            return await self._finish(doc, DeliveryState.WITHDRAWN, now, "channel_off")
        return None

    async def _send(self, doc: Mapping[str, Any], now: dt.datetime) -> str:
        channel = Channel(doc["channel"])
        sender = self.senders.get(channel)
        try:
            if sender is None:
                raise ChannelFailure(
                    f"the {channel} channel is not configured", permanent=True
                )
            message = self.composer.compose(doc, await self._address(doc, channel))
            receipt = await sender.send(message)
        except ChannelFailure as failure:
            return await self._failed(doc, now, failure)
        return await self._finish(
            doc,
            DeliveryState.SENT,
            now,
            "",
            {"sent_at": now, "receipt": receipt.reference},
        )

    async def _address(self, doc: Mapping[str, Any], channel: Channel) -> str | None:
        if channel is Channel.INBOX:
            return None
        field = "email" if channel is Channel.EMAIL else "phone"
        user = await self.database[USERS].find_one({"_id": doc["owner_id"]}, {field: 1})
        return None if user is None else user.get(field)

    async def _failed(
        self, doc: Mapping[str, Any], now: dt.datetime, failure: ChannelFailure
    ) -> str:
        outcome = delivery.after_failure(
            Channel(doc["channel"]),
            int(doc.get("attempts", 1)),
            now=now,
            permanent=failure.permanent,
        )
        logger.warning(
            "delivery failed delivery=%s channel=%s attempt=%s permanent=%s error=%s",
            doc["_id"],
            doc["channel"],
            doc.get("attempts"),
            failure.permanent,
            failure,
        )
        extra: dict[str, Any] = {"last_error": str(failure)[:200]}
        if outcome.retry_at is not None:
            extra["available_at"] = outcome.retry_at
        return await self._finish(doc, outcome.state, now, "send_failed", extra)

    async def _release(
        self, doc: Mapping[str, Any], now: dt.datetime, until: dt.datetime, reason: str
    ) -> str:
        """Give the claim back without counting an attempt."""
        written = await self._move(
            doc,
            DeliveryState.PENDING,
            now,
            reason,
            {"available_at": until},
            inc={"attempts": -1},
        )
        if not written:
            return "lost"
        return "deferred" if reason != "plan_changed" else "released"

    async def _finish(
        self,
        doc: Mapping[str, Any],
        state: DeliveryState,
        now: dt.datetime,
        reason: str,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        written = await self._move(doc, state, now, reason, extra or {})
        return str(state) if written else "lost"

    async def _move(
        self,
        doc: Mapping[str, Any],
        state: DeliveryState,
        now: dt.datetime,
        reason: str,
        extra: Mapping[str, Any],
        *,
        inc: Mapping[str, int] | None = None,
    ) -> bool:
        """Record a move out of our claim; False if the claim was lost meanwhile."""
        delivery.transition(doc["_id"], DeliveryState.CLAIMED, state, reason=reason)
        keep_lease = state is DeliveryState.CLAIMED
        update: dict[str, Any] = {
            "$set": {
                "state": str(state),
                "reason": reason,
                "lease_owner": self.worker_id if keep_lease else None,
                "updated_at": now,
                **extra,
            }
        }
        if inc:
            update["$inc"] = dict(inc)
        result = await self.database[DELIVERIES].update_one(
            {
                "_id": doc["_id"],
                "state": str(DeliveryState.CLAIMED),
                "lease_owner": self.worker_id,
            },
            update,
        )
        if result.modified_count != 1:
            logger.warning(
                "delivery outcome not recorded delivery=%s wanted=%s (claim lost)",
                doc["_id"],
                state,
            )
            return False
        return True

    async def close(self) -> None:
        for sender in self.senders.values():
            await sender.close()


class DispatchRunner:
    """Runs passes for a periodic job, one at a time; `stop` waits for the pass
    in hand so that nothing is cut off mid-send at shutdown."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._passes: set[asyncio.Task[PassReport]] = set()

    async def tick(self) -> PassReport | None:
        """One pass, unless one is still running (then None)."""
        if self._passes:
            return None
        task = asyncio.ensure_future(self.dispatcher.run_once())
        self._passes.add(task)
        task.add_done_callback(self._passes.discard)
        # shielded: a cancelled job leaves the pass for stop() to wait on
        return await asyncio.shield(task)

    async def stop(self) -> None:
        self.dispatcher.request_stop()
        for task in list(self._passes):
            try:
                await task
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("dispatch pass failed at stop")
        await self.dispatcher.close()
        logger.info("dispatcher stopped worker=%s", self.dispatcher.worker_id)
