"""Consultation attachments: images, PDF and DICOM files kept in GridFS.

The bytes decide what a file is (its name and the browser's claim do not):
images must decode with Pillow and DICOM must parse with pydicom. Every file
carries the metadata that scopes it (consultation, inviting station path,
uploader); callers resolve the consultation in the reader's scope first and
then look the file up under that consultation only, so another station's
clinician finds nothing. Thumbnails and DICOM renders are made once, at
upload, in a worker thread, and kept in a second bucket.

The per-consultation quota is a counter claimed with a conditional update:
two uploads racing for the last megabytes cannot both win.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

import numpy
import pydicom
import pydicom.pixels
from bson import ObjectId
from gridfs import AsyncGridFSBucket, NoFile
from PIL import Image, ImageOps
from pymongo.errors import DuplicateKeyError

from commons import audit, files
from commons.audit import Actor
from commons.db import Database, index
from commons.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from commons.files import DICOM, IMAGE_TYPES, JPEG, PDF, PNG
from commons.identity import User
from consult.room import participant_ids
from consult.rules import parties_of
from consult.states import State

logger = logging.getLogger(__name__)

BUCKET = "consult_attachments"
PREVIEWS = "consult_attachment_previews"
USAGE = "consult_attachment_usage"
KIND = "consultation"
FIELD = "files"
MEGABYTE = 1024 * 1024
MAX_FILE_BYTES = 20 * MEGABYTE
MAX_TOTAL_BYTES = 100 * MEGABYTE
MAX_FILES = 100
ACCEPTED = (JPEG, PNG, PDF, DICOM)
THUMBNAIL_EDGE = 320
RENDER_EDGE = 2048
# a PDF ends with %%EOF, perhaps followed by a little whitespace or junk
PDF_TAIL_BYTES = 2048
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
INDEXES = (
    index(f"{BUCKET}.files", "metadata.consultation_id", "uploadDate"),
    index(f"{PREVIEWS}.files", "metadata.attachment_id", "metadata.variant"),
)


class Variant(StrEnum):
    """Derived images kept beside an attachment."""

    THUMBNAIL = "thumbnail"  # JPEG, at most THUMBNAIL_EDGE pixels a side
    RENDER = "render"  # PNG of a DICOM file's first frame


VARIANT_TYPES = {Variant.THUMBNAIL: JPEG, Variant.RENDER: PNG}


@dataclass(frozen=True, kw_only=True)
class Attachment:
    id: str
    consultation_id: str
    filename: str
    media_type: str
    size: int
    uploaded_by_id: str
    uploaded_by_name: str
    uploaded_at: datetime
    variants: frozenset[Variant] = frozenset()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Attachment:
        metadata = document["metadata"]
        return cls(
            id=str(document["_id"]),
            consultation_id=metadata["consultation_id"],
            filename=document["filename"],
            media_type=metadata["media_type"],
            size=document["length"],
            uploaded_by_id=metadata["uploaded_by"],
            uploaded_by_name=metadata.get("uploaded_by_name", ""),
            uploaded_at=document["uploadDate"],
            variants=frozenset(Variant(v) for v in metadata.get("variants", ())),
        )

    @property
    def kind(self) -> str:
        """image, pdf or dicom: how the pages show it."""
        if self.media_type in IMAGE_TYPES:
            return "image"
        return "pdf" if self.media_type == PDF else "dicom"

    @property
    def inline(self) -> bool:
        """Whether a browser shows the original itself (DICOM it cannot)."""
        return self.media_type != DICOM

    @property
    def size_text(self) -> str:
        return size_text(self.size)


@dataclass(frozen=True, kw_only=True)
class Panel:
    """What a consultation page shows of its attachments."""

    consultation_id: str
    items: list[Attachment]
    used_bytes: int
    can_upload: bool
    removable: frozenset[str] = frozenset()
    max_file_megabytes: int = MAX_FILE_BYTES // MEGABYTE
    max_total_megabytes: int = MAX_TOTAL_BYTES // MEGABYTE

    @property
    def used_text(self) -> str:
        return size_text(self.used_bytes)


def size_text(size: int) -> str:
    """Bytes for people: KB below a megabyte, MB with one decimal above."""
    if size < MEGABYTE:
        return f"{max(1, round(size / 1024))} KB" if size else "0 KB"
    return f"{size / MEGABYTE:.1f}".removesuffix(".0") + " MB"


# who may do what


def check_uploader(user: User, doc: Mapping[str, Any]) -> None:
    """Parties and session participants add files until the consultation closes."""
    if not parties_of(user, doc) and user.id not in participant_ids(doc):
        raise Forbidden(
            f"only the inviting and invited parties add files to consultation "
            f"{doc['_id']}"
        )
    if State(doc["state"]).terminal:
        raise Conflict(
            f"consultation {doc['_id']} is {doc['state']}; files are added only "
            "before it is completed, declined or cancelled"
        )


def check_remover(user: User, doc: Mapping[str, Any], attachment: Attachment) -> None:
    """The uploader removes a file, and only while the consultation is a draft."""
    if attachment.uploaded_by_id != user.id:
        raise Forbidden("only the person who added a file removes it")
    # once sent, the invited side may have read it: it stays on the record
    if doc["state"] != State.DRAFT:
        raise Conflict(
            f"consultation {doc['_id']} is {doc['state']}; files are removed "
            "only while it is a draft"
        )


def _allowed(check: Callable[[], None]) -> bool:
    try:
        check()
    except (Forbidden, Conflict):
        return False
    return True


# content


async def check_content(data: bytes, *, filename: str) -> str:
    """The media type the bytes really are; Invalid when they are none we take."""
    media_type = files.sniff(data)
    if media_type in IMAGE_TYPES:
        try:
            return await files.check_image(data, field=FIELD)
        except Invalid:
            reason = "it does not decode as a JPEG or PNG image"
            raise _refused(filename, reason) from None
    if media_type == PDF:
        if b"%%EOF" not in data[-PDF_TAIL_BYTES:]:
            raise _refused(filename, "the PDF is cut short (no %%EOF at its end)")
        return PDF
    if media_type == DICOM:
        problem = await asyncio.to_thread(dicom_problem, data)
        if problem:
            raise _refused(filename, problem)
        return DICOM
    raise _refused(
        filename,
        "expected a JPEG or PNG image, a PDF or a DICOM file, and its content "
        "is none of these",
    )


def _refused(filename: str, reason: str) -> Invalid:
    return Invalid({FIELD: f"{filename!r}: {reason}"})


def dicom_problem(data: bytes) -> str | None:
    """Why the bytes are not a usable DICOM part-10 file (None: they are)."""
    unreadable = "it has a DICOM marker but does not parse as DICOM"
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception:  # pydicom raises many types for malformed input
        return unreadable
    # the file meta is read eagerly: check it before decoding the rest
    meta = dataset.file_meta
    syntax = str(meta.get("TransferSyntaxUID") or "")
    sop_class = str(meta.get("MediaStorageSOPClassUID") or "")
    if not UID.fullmatch(syntax) or not UID.fullmatch(sop_class):
        return "its DICOM file meta lacks a transfer syntax or SOP class"
    try:
        if str(dataset.get("SOPClassUID") or "") != sop_class:
            return "its SOP class does not match its file meta"
        # elements decode lazily: touch each so a corrupt one fails here
        for element in dataset.iterall():
            _ = element.value
    except Exception:
        return unreadable
    if "PixelData" in dataset and not meta.TransferSyntaxUID.is_compressed:
        return _pixel_length_problem(dataset)
    return None


def _pixel_length_problem(dataset: Any) -> str | None:
    try:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return "its image has no usable rows, columns or bits allocated"
    if len(dataset.PixelData) < expected:
        return "its pixel data is shorter than its image size says"
    return None


def make_previews(
    data: bytes, media_type: str, *, filename: str
) -> dict[Variant, bytes]:
    """Thumbnail (and DICOM render) of checked bytes; CPU work for a thread."""
    if media_type in IMAGE_TYPES:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = ImageOps.exif_transpose(opened)
                return {Variant.THUMBNAIL: _thumbnail(image)}
        except (OSError, ValueError, Image.DecompressionBombError):
            # verify() passed but the pixels do not decode: a broken image
            reason = "the image is damaged and its pixels cannot be read"
            raise _refused(filename, reason) from None
    if media_type == DICOM:
        frame = dicom_image(data)
        if frame is None:
            return {}
        return {
            Variant.RENDER: _render_png(frame),
            Variant.THUMBNAIL: _thumbnail(frame),
        }
    return {}


def dicom_image(data: bytes) -> Image.Image | None:
    """The first frame as an 8-bit image; None when it cannot be decoded here."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        return None
    if int(dataset.Rows) * int(dataset.Columns) > files.MAX_IMAGE_PIXELS:
        return None
    try:
        frame = pydicom.pixels.pixel_array(dataset, index=0)
        return _to_image(frame, dataset)
    except Exception:  # unsupported compression and odd encodings alike
        logger.warning(
            "dicom not rendered syntax=%s", dataset.file_meta.TransferSyntaxUID
        )
        return None


def _to_image(frame: Any, dataset: Any) -> Image.Image:
    if frame.ndim == 3:
        # colour: already RGB after pydicom's conversion
        return Image.fromarray(_scale(frame))
    values = pydicom.pixels.apply_modality_lut(frame, dataset)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        values = pydicom.pixels.apply_voi_lut(values, dataset)
    grey = _scale(values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1 shows its lowest values white
    return Image.fromarray(grey)


def _scale(values: Any) -> Any:
    # stretch whatever range the modality uses onto 0..255 for display
    values = values.astype(numpy.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return numpy.zeros(values.shape, dtype=numpy.uint8)
    return ((values - low) * (255.0 / (high - low))).round().astype(numpy.uint8)


def _thumbnail(image: Image.Image) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return out.getvalue()


def _render_png(image: Image.Image) -> bytes:
    image = image.copy()
    image.thumbnail((RENDER_EDGE, RENDER_EDGE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# storage


@dataclass(frozen=True, kw_only=True)
class Checked:
    """An uploaded file whose type is known and whose previews are made."""

    filename: str
    data: bytes
    media_type: str
    previews: Mapping[Variant, bytes]


async def prepare(data: bytes, *, filename: str) -> Checked:
    """Check the bytes and make the previews, before anything is stored."""
    if not data:
        raise _refused(filename, "the file is empty")
    media_type = await check_content(data, filename=filename)
    previews = await asyncio.to_thread(
        make_previews, data, media_type, filename=filename
    )
    return Checked(
        filename=filename, data=data, media_type=media_type, previews=previews
    )


class AttachmentStore:
    """The attachments of consultations; callers resolve the consultation first."""

    def __init__(self, database: Database) -> None:
        self._bucket = AsyncGridFSBucket(database.db, bucket_name=BUCKET)
        self._previews = AsyncGridFSBucket(database.db, bucket_name=PREVIEWS)
        self._files = database[f"{BUCKET}.files"]
        self._preview_files = database[f"{PREVIEWS}.files"]
        self._usage = database[USAGE]

    async def of_consultation(self, consultation_id: str) -> list[Attachment]:
        cursor = self._files.find({"metadata.consultation_id": consultation_id})
        return [
            Attachment.from_document(doc)
            async for doc in cursor.sort([("uploadDate", 1), ("_id", 1)])
        ]

    async def find(self, consultation_id: str, attachment_id: str) -> Attachment:
        """The file if it belongs to this consultation; NotFound otherwise."""
        if not ObjectId.is_valid(attachment_id):
            raise NotFound(f"no attachment with id {attachment_id!r}")
        document = await self._files.find_one(
            {
                "_id": ObjectId(attachment_id),
                "metadata.consultation_id": consultation_id,
            }
        )
        if document is None:
            raise NotFound(f"no attachment with id {attachment_id!r}")
        return Attachment.from_document(document)

    async def used_bytes(self, consultation_id: str) -> int:
        usage = await self._usage.find_one({"_id": consultation_id})
        return int(usage["bytes"]) if usage else 0

    async def chunks(self, attachment: Attachment) -> AsyncIterator[bytes]:
        """The original's bytes, one GridFS chunk at a time."""
        try:
            stream = await self._bucket.open_download_stream(ObjectId(attachment.id))
        except NoFile:
            raise NotFound(f"no attachment with id {attachment.id!r}") from None
        while chunk := await stream.readchunk():
            yield chunk

    async def preview(self, attachment: Attachment, variant: Variant) -> bytes:
        if variant not in attachment.variants:
            raise NotFound(f"attachment {attachment.id} has no {variant}")
        document = await self._preview_files.find_one(
            {"metadata.attachment_id": attachment.id, "metadata.variant": variant}
        )
        if document is None:
            raise NotFound(f"attachment {attachment.id} has no {variant}")
        stream = await self._previews.open_download_stream(document["_id"])
        return bytes(await stream.read())

    async def put(
        self, doc: Mapping[str, Any], user: User, checked: Checked
    ) -> Attachment:
        """Claim quota, then store the file and its previews."""
        await self._reserve(doc["_id"], len(checked.data))
        try:
            return await self._store(doc, user, checked)
        except BaseException:
            await self._release(doc["_id"], len(checked.data))
            raise

    async def remove(self, attachment: Attachment) -> None:
        await self._remove_previews(attachment.id)
        try:
            await self._bucket.delete(ObjectId(attachment.id))
        except NoFile:
            return  # removed meanwhile; its quota went with it
        await self._release(attachment.consultation_id, attachment.size)

    async def _store(
        self, doc: Mapping[str, Any], user: User, checked: Checked
    ) -> Attachment:
        metadata = {
            "consultation_id": doc["_id"],
            "station_path": list(doc["station_path"]),
            "uploaded_by": user.id,
            "uploaded_by_name": user.display_name,
            "media_type": checked.media_type,
            "variants": sorted(checked.previews),
        }
        file_id = await self._bucket.upload_from_stream(
            _safe_name(checked.filename), checked.data, metadata=metadata
        )
        try:
            for variant, data in checked.previews.items():
                await self._previews.upload_from_stream(
                    f"{file_id}-{variant}",
                    data,
                    metadata={
                        "attachment_id": str(file_id),
                        "consultation_id": doc["_id"],
                        "variant": str(variant),
                    },
                )
        except BaseException:
            await self._remove_previews(str(file_id))
            await self._bucket.delete(file_id)
            raise
        return await self.find(doc["_id"], str(file_id))

    async def _remove_previews(self, attachment_id: str) -> None:
        async for document in self._preview_files.find(
            {"metadata.attachment_id": attachment_id}, {"_id": 1}
        ):
            await self._previews.delete(document["_id"])

    async def _reserve(self, consultation_id: str, size: int) -> None:
        try:
            await self._usage.update_one(
                {"_id": consultation_id},
                {"$setOnInsert": {"bytes": 0, "files": 0}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # a concurrent first upload created the counter
        claimed = await self._usage.update_one(
            {
                "_id": consultation_id,
                "bytes": {"$lte": MAX_TOTAL_BYTES - size},
                "files": {"$lt": MAX_FILES},
            },
            {"$inc": {"bytes": size, "files": 1}},
        )
        if claimed.modified_count != 1:
            raise TooLarge(await self._quota_message(consultation_id, size))

    async def _quota_message(self, consultation_id: str, size: int) -> str:
        usage = await self._usage.find_one({"_id": consultation_id}) or {}
        if usage.get("files", 0) >= MAX_FILES:
            return f"a consultation holds at most {MAX_FILES} files; remove one first"
        left = max(0, MAX_TOTAL_BYTES - int(usage.get("bytes", 0)))
        return (
            f"{FIELD}: the consultation's files may total "
            f"{size_text(MAX_TOTAL_BYTES)}; {size_text(left)} are left "
            f"and this file is {size_text(size)}"
        )

    async def _release(self, consultation_id: str, size: int) -> None:
        await self._usage.update_one(
            {"_id": consultation_id}, {"$inc": {"bytes": -size, "files": -1}}
        )


def _safe_name(filename: str) -> str:
    # the name is only ever shown as text (escaped) or percent-encoded in a
    # header; control characters go so it stays on one line
    name = "".join(c for c in filename if c.isprintable())[:120].strip()
    return name or "file"


# one upload request


@dataclass(kw_only=True)
class Batch:
    """The files of one upload request: all of them are kept, or none."""

    store: AttachmentStore
    database: Database
    doc: Mapping[str, Any]
    user: User
    actor: Actor
    added: list[Attachment] = field(default_factory=list)

    async def add(self, data: bytes, *, filename: str) -> Attachment:
        checked = await prepare(data, filename=filename)
        attachment = await self.store.put(self.doc, self.user, checked)
        self.added.append(attachment)
        return attachment

    async def commit(self) -> list[Attachment]:
        for attachment in self.added:
            await audit.record(
                self.database,
                self.actor,
                "consultation.attachment_added",
                object_kind=KIND,
                object_id=self.doc["_id"],
                detail={
                    "attachment": attachment.id,
                    "media_type": attachment.media_type,
                    "bytes": attachment.size,
                },
            )
            logger.info(
                "attachment added consultation=%s attachment=%s bytes=%d type=%s",
                self.doc["_id"],
                attachment.id,
                attachment.size,
                attachment.media_type,
            )
        return list(self.added)

    async def rollback(self, status: int) -> None:
        """Remove what this request stored; one audit record says it failed."""
        for attachment in self.added:
            await self.store.remove(attachment)
        self.added.clear()
        await audit.record(
            self.database,
            self.actor,
            "consultation.attachment_added",
            object_kind=KIND,
            object_id=self.doc["_id"],
            outcome="refused",
            detail={"status": status},
        )


async def panel(database: Database, user: User, doc: Mapping[str, Any]) -> Panel:
    """The attachments part of a consultation page (doc already in scope)."""
    store = AttachmentStore(database)
    items = await store.of_consultation(doc["_id"])
    return Panel(
        consultation_id=doc["_id"],
        items=items,
        used_bytes=await store.used_bytes(doc["_id"]),
        can_upload=_allowed(partial(check_uploader, user, doc)),
        removable=frozenset(
            item.id
            for item in items
            if _allowed(partial(check_remover, user, doc, item))
        ),
    )
