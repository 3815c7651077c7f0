"""Backup and restore in mongodump's layout, so `mongorestore` can load a dump.

A dump is ``DIR/<database>/<collection>.bson`` (BSON documents one after
another) with ``<collection>.metadata.json`` beside it listing the indexes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import bson
from bson import json_util
from pymongo import ReplaceOne

from commons.db import Database

logger = logging.getLogger(__name__)
BATCH = 1000
# live logins and throttle counters: restoring them would revive old sessions
TRANSIENT = frozenset({"sessions", "login_failures"})


class BackupError(RuntimeError):
    pass


async def dump(database: Database, directory: Path) -> dict[str, int]:
    target = directory / database.db.name
    target.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name in sorted(await database.db.list_collection_names()):
        if name.startswith("system.") or name in TRANSIENT:
            continue
        counts[name] = await _dump_collection(database, name, target)
    logger.info("backup written dir=%s collections=%d", directory, len(counts))
    return counts


async def _dump_collection(database: Database, name: str, target: Path) -> int:
    collection = database[name]
    path = target / f"{name}.bson"
    await asyncio.to_thread(path.write_bytes, b"")
    count, batch = 0, bytearray()
    async for document in collection.find({}).sort("_id", 1):
        batch += bson.encode(document)
        count += 1
        if len(batch) > 1 << 20:
            await asyncio.to_thread(_append, path, bytes(batch))
            batch.clear()
    await asyncio.to_thread(_append, path, bytes(batch))
    indexes = [dict(info) async for info in await collection.list_indexes()]
    metadata = {
        "options": {},
        "indexes": indexes,
        "collectionName": name,
        "type": "collection",
    }
    text = json_util.dumps(metadata, json_options=json_util.CANONICAL_JSON_OPTIONS)
    await asyncio.to_thread((target / f"{name}.metadata.json").write_text, text)
    return count


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


async def restore(database: Database, directory: Path, *, drop: bool) -> dict[str, int]:
    source = _dump_folder(directory, database.db.name)
    counts: dict[str, int] = {}
    for bson_file in sorted(source.glob("*.bson")):
        name = bson_file.stem
        if drop:
            await database[name].delete_many({})
        counts[name] = await _restore_collection(database, name, bson_file)
        await _restore_indexes(database, name, bson_file.with_suffix(".metadata.json"))
    logger.info("restore done dir=%s collections=%d", directory, len(counts))
    return counts


def _dump_folder(directory: Path, database_name: str) -> Path:
    if (directory / database_name).is_dir():
        return directory / database_name
    if any(directory.glob("*.bson")):
        return directory
    raise BackupError(f"{directory} holds no dump: expected {database_name}/*.bson")


async def _restore_collection(database: Database, name: str, path: Path) -> int:
    data = await asyncio.to_thread(path.read_bytes)
    try:
        documents = bson.decode_all(data)
    except bson.errors.InvalidBSON as exc:
        raise BackupError(
            f"{path} is not valid BSON ({exc}); nothing of it was restored"
        ) from None
    for start in range(0, len(documents), BATCH):
        batch = documents[start : start + BATCH]
        # replace by _id: restoring the same dump twice changes nothing
        await database[name].bulk_write(
            [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in batch]
        )
    return len(documents)


async def _restore_indexes(database: Database, name: str, path: Path) -> None:
    try:
        metadata = json_util.loads(await asyncio.to_thread(path.read_text))
    except FileNotFoundError:
        return
    for info in metadata.get("indexes", []):
        if info.get("name") == "_id_":
            continue
        options = {k: v for k, v in info.items() if k not in ("key", "v", "ns")}
        await database[name].create_index(list(dict(info["key"]).items()), **options)
