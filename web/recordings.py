"""Recordings of video rooms, kept in GridFS and listed with their room."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from bson import ObjectId
from gridfs import AsyncGridFSBucket, NoFile

from commons.errors import NotFound
from signaling.recorder import Recording
from web import keys

logger = logging.getLogger(__name__)

BUCKET = "recordings"
CHUNK_BYTES = 1024 * 1024


class GridFSRecordingSink:
    """The recorder's sink: streams each finished file into GridFS."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def store(self, recording: Recording, path: Path) -> None:
        bucket = AsyncGridFSBucket(self._app[keys.DATABASE].db, bucket_name=BUCKET)
        upload = bucket.open_upload_stream(
            recording.filename,
            metadata={
                "room": recording.room,
                "peer_id": recording.peer_id,
                "content_type": recording.content_type,
                "started_at": recording.started_at,
                "ended_at": recording.ended_at,
                "duration_seconds": recording.duration_seconds,
                "video_frames": recording.video_frames,
                "audio_frames": recording.audio_frames,
            },
        )
        # read in a thread, a chunk at a time: a long call is a large file
        handle = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                await upload.write(chunk)
        finally:
            await asyncio.to_thread(handle.close)
        await upload.close()
        logger.info(
            "recording stored room=%s peer=%s file=%s seconds=%.1f",
            recording.room,
            recording.peer_id,
            upload._id,
            recording.duration_seconds,
        )


async def list_for_room(app: web.Application, room: str) -> list[dict[str, Any]]:
    files = app[keys.DATABASE][f"{BUCKET}.files"]
    cursor = files.find({"metadata.room": room}).sort("uploadDate", 1)
    return [
        {
            "id": str(doc["_id"]),
            "filename": doc["filename"],
            "size": doc["length"],
            **doc["metadata"],
        }
        async for doc in cursor
    ]


async def open_for_room(
    app: web.Application, room: str, file_id: str
) -> tuple[dict[str, Any], bytes]:
    """A recording's metadata and bytes, if it belongs to `room`."""
    if not ObjectId.is_valid(file_id):
        raise NotFound(f"no recording with id {file_id!r}")
    database = app[keys.DATABASE]
    document = await database[f"{BUCKET}.files"].find_one(
        {"_id": ObjectId(file_id), "metadata.room": room}
    )
    if document is None:
        raise NotFound(f"no recording with id {file_id!r}")
    bucket = AsyncGridFSBucket(database.db, bucket_name=BUCKET)
    try:
        stream = await bucket.open_download_stream(ObjectId(file_id))
    except NoFile:
        raise NotFound(f"no recording with id {file_id!r}") from None
    return document, await stream.read()


def setup(app: web.Application) -> None:
    """Hand the sink to the signaling service (rooms.setup reads it)."""
    app.setdefault(keys.SERVICES, {})["recording_sink"] = GridFSRecordingSink(app)
