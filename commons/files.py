"""Uploaded files: type checked by content, stored in GridFS.

A file's name and the browser's Content-Type are the uploader's claims; only
the bytes decide what a file is.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket, NoFile
from PIL import Image, UnidentifiedImageError

from commons.db import Database
from commons.errors import Invalid, NotFound, TooLarge

logger = logging.getLogger(__name__)

JPEG, PNG, PDF, DICOM = (
    "image/jpeg",
    "image/png",
    "application/pdf",
    "application/dicom",
)
IMAGE_TYPES = frozenset({JPEG, PNG})
# decompression bombs: a tiny PNG that unpacks to gigapixels
MAX_IMAGE_PIXELS = 40_000_000


def sniff(data: bytes) -> str | None:
    """The media type the bytes really are, among those we accept; else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"%PDF-"):
        return PDF
    # DICOM part 10: a 128-byte preamble, then the magic "DICM"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return DICOM
    return None


def _decodes_as_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return False
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False


async def check_image(data: bytes, *, field: str) -> str:
    """The image's media type; Invalid naming the field when it is not one."""
    media_type = sniff(data)
    if media_type not in IMAGE_TYPES or not await asyncio.to_thread(
        _decodes_as_image, data
    ):
        raise Invalid({field: "not a JPEG or PNG image; choose a photo or screenshot"})
    return media_type


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    id: str
    filename: str
    media_type: str
    size: int


class FileStore:
    """One GridFS bucket; every file carries the metadata that scopes it."""

    def __init__(self, database: Database, bucket: str) -> None:
        self._bucket = AsyncGridFSBucket(database.db, bucket_name=bucket)
        self._files = database[f"{bucket}.files"]

    async def put(
        self, data: bytes, *, filename: str, media_type: str, metadata: dict[str, Any]
    ) -> StoredFile:
        safe_name = "".join(c for c in filename if c.isprintable())[:120] or "file"
        file_id = await self._bucket.upload_from_stream(
            safe_name, data, metadata={**metadata, "media_type": media_type}
        )
        logger.info(
            "file stored file=%s bytes=%d type=%s", file_id, len(data), media_type
        )
        return StoredFile(
            id=str(file_id), filename=safe_name, media_type=media_type, size=len(data)
        )

    async def get(
        self, file_id: str, *, owner_filter: dict[str, Any]
    ) -> tuple[StoredFile, bytes]:
        """The file if its metadata matches owner_filter; NotFound otherwise."""
        if not ObjectId.is_valid(file_id):
            raise NotFound(f"no file with id {file_id!r}")
        query = {
            "_id": ObjectId(file_id),
            **{f"metadata.{k}": v for k, v in owner_filter.items()},
        }
        document = await self._files.find_one(query)
        if document is None:
            raise NotFound(f"no file with id {file_id!r}")
        try:
            stream = await self._bucket.open_download_stream(ObjectId(file_id))
        except NoFile:
            raise NotFound(f"no file with id {file_id!r}") from None
        data = await stream.read()
        stored = StoredFile(
            id=file_id,
            filename=document["filename"],
            media_type=document["metadata"]["media_type"],
            size=document["length"],
        )
        return stored, data


async def read_part_limited(part: Any, max_bytes: int, *, field: str) -> bytes:
    """Read one multipart part, refusing past max_bytes without buffering more."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{field}: larger than {max_bytes // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)
