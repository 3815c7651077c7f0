"""Consultation attachments and the PDF report: pages, files and the API.

Every handler resolves the consultation in the caller's scope first
(`consult.store.get`, 404 outside it) and then the file under that
consultation only. Uploads are multipart bodies read part by part: the
declared Content-Length is checked against what the consultation may still
hold before a byte is read, and each part is capped while it streams, so the
application's small client_max_size never applies and nothing large is
buffered. The CSRF token of a multipart form travels in the query string or
the X-CSRF-Token header (see web.middleware.csrf).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web

from commons import audit
from commons.errors import BadRequest, Invalid, TooLarge
from commons.files import DICOM, JPEG, PDF, PNG, read_part_limited
from commons.identity import User, now_utc
from commons.scope import Scope
from consult import attachments, pdf, store
from consult.attachments import (
    FIELD,
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    MEGABYTE,
    Attachment,
    AttachmentStore,
    Batch,
    Panel,
    Variant,
    size_text,
)
from consult.opinion import verify
from web import keys
from web.apispec import Operation
from web.context import actor, gettext, require_user
from web.render import render_html
from web.views.consult import DETAIL_PARTS, ID_PATTERN, LABELS, STAFF

logger = logging.getLogger(__name__)

# multipart framing around the files: boundaries and part headers
MULTIPART_SLACK_BYTES = 64 * 1024
MAX_TEXT_PART_BYTES = 16 * 1024
MAX_FILES_PER_REQUEST = 20
MAX_PARTS = 50
THUMBNAIL_MAX_AGE_SECONDS = 3600
# a PDF takes about half a second of CPU: a few at a time, the rest wait
# TODO(latency): most of it is fontTools parsing the CJK font in Python,
# holding the GIL; a font parsed once per process (fpdf2 has no public way
# to share one between documents) or a process pool would free the loop
PDF_SLOTS = "consult_pdf_slots"
PDF_CONCURRENCY = 2
DETAIL_PART = "attachments"
EXTENSIONS = {JPEG: "jpg", PNG: "png", PDF: "pdf", DICOM: "dcm"}


# resolving


async def _resolve(request: web.Request) -> tuple[User, dict[str, Any]]:
    """The caller and the consultation in their scope (404 outside it)."""
    user = require_user(request, *STAFF)
    consultation_id = request.match_info["consultation_id"]
    if not ID_PATTERN.fullmatch(consultation_id):
        raise web.HTTPNotFound()
    doc = await store.get(request.app[keys.DATABASE], consultation_id, Scope.of(user))
    return user, doc


async def _resolve_file(
    request: web.Request,
) -> tuple[User, dict[str, Any], Attachment]:
    user, doc = await _resolve(request)
    attachment = await _files(request).find(
        doc["_id"], request.match_info["attachment_id"]
    )
    return user, doc, attachment


def _files(request: web.Request) -> AttachmentStore:
    return AttachmentStore(request.app[keys.DATABASE])


async def _audit(
    request: web.Request, doc: Mapping[str, Any], action: str, **detail: Any
) -> None:
    await audit.record(
        request.app[keys.DATABASE],
        actor(request),
        f"consultation.{action}",
        object_kind=store.KIND,
        object_id=doc["_id"],
        detail=detail,
    )


# receiving files


async def receive(
    request: web.Request, user: User, doc: dict[str, Any]
) -> list[Attachment]:
    """Store every file of a multipart upload, or none; refusals are audited."""
    files = _files(request)
    batch = Batch(
        store=files,
        database=request.app[keys.DATABASE],
        doc=doc,
        user=user,
        actor=actor(request),
    )
    try:
        attachments.check_uploader(user, doc)
        remaining = MAX_TOTAL_BYTES - await files.used_bytes(doc["_id"])
        # before a byte of the body is read
        _check_declared_length(request, remaining)
        _check_multipart(request)
        await _read_parts(request, batch, remaining)
    except BaseException as exc:
        # cleanup only: the error itself goes on to the error middleware
        await batch.rollback(getattr(exc, "status", 500))
        raise
    return await batch.commit()


def _check_multipart(request: web.Request) -> None:
    if request.content_type != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data upload with '{FIELD}' parts, "
            f"got content type {request.content_type!r}"
        )


def _check_declared_length(request: web.Request, remaining: int) -> None:
    declared = request.content_length
    if declared is None or declared <= remaining + MULTIPART_SLACK_BYTES:
        return
    raise TooLarge(
        f"the upload is {size_text(declared)} and this consultation has "
        f"{size_text(max(remaining, 0))} of its {size_text(MAX_TOTAL_BYTES)} "
        f"left; each file may be up to {size_text(MAX_FILE_BYTES)}"
    )


async def _read_parts(request: web.Request, batch: Batch, remaining: int) -> None:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"the upload cannot be read: {exc}") from None
    parts = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > MAX_PARTS:
            raise BadRequest(f"an upload has at most {MAX_PARTS} parts")
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not accepted")
        if part.name != FIELD or not part.filename:
            # other fields, and the empty part of a file input left blank
            await read_part_limited(part, MAX_TEXT_PART_BYTES, field=part.name or "-")
            continue
        if len(batch.added) >= MAX_FILES_PER_REQUEST:
            raise Invalid({FIELD: f"at most {MAX_FILES_PER_REQUEST} files at a time"})
        # clients percent-encode names (aiohttp all of them, browsers the
        # quote and line breaks): read them back as the text that was meant
        filename = unquote(part.filename)
        data = await _read_file(part, filename, remaining)
        remaining -= (await batch.add(data, filename=filename)).size
    if not batch.added:
        raise Invalid({FIELD: "choose at least one file to upload"})


async def _read_file(part: BodyPartReader, filename: str, remaining: int) -> bytes:
    try:
        return await read_part_limited(
            part, min(MAX_FILE_BYTES, max(remaining, 0)), field=FIELD
        )
    except TooLarge:
        if remaining >= MAX_FILE_BYTES:
            limit = f"each file may be up to {size_text(MAX_FILE_BYTES)}"
        else:
            limit = (
                f"the consultation's files may total {size_text(MAX_TOTAL_BYTES)} "
                f"and {size_text(max(remaining, 0))} are left"
            )
        raise TooLarge(f"{FIELD}: {filename!r} is too large; {limit}") from None


# pages


@dataclass(frozen=True, kw_only=True)
class AttachmentsPage:
    doc: Mapping[str, Any]
    parts: Mapping[str, Any]  # as on the detail page: {"attachments": Panel}


async def attachments_page(request: web.Request) -> web.Response:
    """The consultation's files on their own, to open beside the video room."""
    user, doc = await _resolve(request)
    await _audit(request, doc, "attachments_listed")
    page = AttachmentsPage(
        doc=doc, parts={DETAIL_PART: await attachments_part(request, user, doc)}
    )
    return render_html(request, "consult/attachments.html", page=page, standalone=True)


async def attachments_part(
    request: web.Request, user: User, doc: dict[str, Any]
) -> Panel:
    """The detail page's attachments section (registered as a detail part)."""
    return await attachments.panel(request.app[keys.DATABASE], user, doc)


async def upload_page(request: web.Request) -> web.Response:
    user, doc = await _resolve(request)
    await receive(request, user, doc)
    back = request.query.get("next") == "attachments"
    where = "/attachments" if back else "#attachments"
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}{where}")


async def remove_page(request: web.Request) -> web.Response:
    user, doc, attachment = await _resolve_file(request)
    attachments.check_remover(user, doc, attachment)
    await _files(request).remove(attachment)
    await _audit(request, doc, "attachment_removed", attachment=attachment.id)
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}#attachments")


# files


async def original(request: web.Request) -> web.Response:
    """The file as uploaded: inline for images and PDF, a download otherwise."""
    _, doc, attachment = await _resolve_file(request)
    download = request.query.get("download") == "1" or not attachment.inline
    await _audit(request, doc, "attachment_viewed", attachment=attachment.id)
    return _file_response(attachment, _files(request).chunks(attachment), download)


def _file_response(
    attachment: Attachment, chunks: AsyncIterator[bytes], download: bool
) -> web.Response:
    # a body from an iterator is written after the middlewares have added
    # their headers, one GridFS chunk at a time
    return web.Response(
        body=chunks,
        content_type=attachment.media_type,
        headers={
            "Content-Disposition": _disposition(attachment, download=download),
            "Content-Length": str(attachment.size),
        },
    )


def _disposition(attachment: Attachment, *, download: bool) -> str:
    kind = "attachment" if download else "inline"
    # an ASCII name for old clients, the real one encoded per RFC 6266/5987
    plain = f"attachment-{attachment.id}.{EXTENSIONS[attachment.media_type]}"
    encoded = quote(attachment.filename, safe="")
    return f"{kind}; filename=\"{plain}\"; filename*=UTF-8''{encoded}"


async def thumbnail(request: web.Request) -> web.Response:
    # not audited one by one: thumbnails appear on pages whose view is audited
    return await _preview(request, Variant.THUMBNAIL)


async def render(request: web.Request) -> web.Response:
    """A DICOM file's first frame as PNG; audited like the original."""
    return await _preview(request, Variant.RENDER)


async def _preview(request: web.Request, variant: Variant) -> web.Response:
    _, doc, attachment = await _resolve_file(request)
    if variant is Variant.RENDER:
        await _audit(
            request,
            doc,
            "attachment_viewed",
            attachment=attachment.id,
            variant="render",
        )
    # derived from immutable bytes: the browser may keep it for a while
    etag = f'"{attachment.id}-{variant}"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE_SECONDS}",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    data = await _files(request).preview(attachment, variant)
    return web.Response(
        body=data, content_type=attachments.VARIANT_TYPES[variant], headers=headers
    )


# the PDF report


async def report_pdf(request: web.Request) -> web.Response:
    """The printable report as PDF, for whoever may see the report page."""
    _, doc = await _resolve(request)
    database = request.app[keys.DATABASE]
    records = await store.opinions(database, doc["_id"])
    codes = [doc["station_code"], doc["target_station_code"]]
    report = pdf.ReportInput(
        doc=doc,
        opinions=records,
        verified=[verify(record) for record in records],
        names=await store.station_names(database, codes),
        labels=LABELS,
        generated_at=now_utc(),
    )
    font = await asyncio.to_thread(pdf.find_cjk_font)
    async with request.app[keys.SERVICES][PDF_SLOTS]:
        data = await asyncio.to_thread(
            pdf.render_report, report, gettext(request), font=font
        )
    await _audit(request, doc, "report_pdf_downloaded")
    logger.info("report pdf consultation=%s bytes=%d", doc["_id"], len(data))
    return web.Response(
        body=data,
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="consultation-{doc["_id"]}.pdf"'
        },
    )


# API


def attachment_json(attachment: Attachment) -> dict[str, Any]:
    page = f"/consultations/{attachment.consultation_id}/attachments/{attachment.id}"
    return {
        "id": attachment.id,
        "filename": attachment.filename,
        "media_type": attachment.media_type,
        "size": attachment.size,
        "uploaded_by": {
            "id": attachment.uploaded_by_id,
            "name": attachment.uploaded_by_name,
        },
        "uploaded_at": attachment.uploaded_at.isoformat(),
        "content_url": f"/api/v1{page}/content",
        "thumbnail_url": (
            f"{page}/thumbnail" if Variant.THUMBNAIL in attachment.variants else None
        ),
        "render_url": f"{page}/render"
        if Variant.RENDER in attachment.variants
        else None,
    }


async def api_list(request: web.Request) -> web.Response:
    _, doc = await _resolve(request)
    await _audit(request, doc, "attachments_listed")
    files = _files(request)
    items = await files.of_consultation(doc["_id"])
    return web.json_response(
        {
            "items": [attachment_json(item) for item in items],
            "used_bytes": await files.used_bytes(doc["_id"]),
            "max_total_bytes": MAX_TOTAL_BYTES,
            "max_file_bytes": MAX_FILE_BYTES,
        }
    )


async def api_upload(request: web.Request) -> web.Response:
    user, doc = await _resolve(request)
    added = await receive(request, user, doc)
    return web.json_response(
        {"items": [attachment_json(item) for item in added]}, status=201
    )


async def api_content(request: web.Request) -> web.Response:
    return await original(request)


ATTACHMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "filename", "media_type", "size", "content_url"],
    "properties": {
        "id": {"type": "string"},
        "filename": {"type": "string"},
        "media_type": {
            "type": "string",
            "enum": list(attachments.ACCEPTED),
        },
        "size": {"type": "integer", "description": "bytes"},
        "uploaded_by": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        },
        "uploaded_at": {"type": "string", "format": "date-time"},
        "content_url": {"type": "string"},
        "thumbnail_url": {"type": ["string", "null"]},
        "render_url": {
            "type": ["string", "null"],
            "description": "PNG of a DICOM file's first frame",
        },
    },
}
_REF = {"$ref": "#/components/schemas/ConsultationAttachment"}
_FILES = "/consultations/{consultation_id}/attachments"
TAG = "consultations"
API_ROUTES = (
    (
        Operation(
            method="GET",
            path=_FILES,
            tag=TAG,
            summary="Files attached to the consultation, and how much room is left",
            response_schema={
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": _REF},
                    "used_bytes": {"type": "integer"},
                    "max_total_bytes": {"type": "integer"},
                    "max_file_bytes": {"type": "integer"},
                },
            },
        ),
        api_list,
    ),
    (
        Operation(
            method="POST",
            path=_FILES,
            tag=TAG,
            success_status=201,
            summary="Attach files: a multipart/form-data body with one or more "
            f"'{FIELD}' parts (JPEG, PNG, PDF or DICOM, checked by content; "
            f"{MAX_FILE_BYTES // MEGABYTE} MB each, "
            f"{MAX_TOTAL_BYTES // MEGABYTE} MB per consultation; 413 beyond)",
            response_schema={
                "type": "object",
                "properties": {"items": {"type": "array", "items": _REF}},
            },
        ),
        api_upload,
    ),
    (
        Operation(
            method="GET",
            path=_FILES + "/{attachment_id}/content",
            tag=TAG,
            summary="The file's bytes, with its checked media type (audited)",
            response_schema={"type": "string", "format": "binary"},
        ),
        api_content,
    ),
)


# wiring


def setup(app: web.Application) -> None:
    """Routes, API operations and indexes for attachments and the PDF report."""
    app[keys.INDEX_SPECS].extend(attachments.INDEXES)
    services = app.setdefault(keys.SERVICES, {})
    services[PDF_SLOTS] = asyncio.Semaphore(PDF_CONCURRENCY)
    services.setdefault(DETAIL_PARTS, {})[DETAIL_PART] = attachments_part
    router = app.router
    one = "/consultations/{consultation_id}"
    file = one + "/attachments/{attachment_id}"
    router.add_get(one + "/attachments", attachments_page)
    router.add_post(one + "/attachments", upload_page)
    router.add_get(file, original)
    router.add_get(file + "/thumbnail", thumbnail)
    router.add_get(file + "/render", render)
    router.add_post(file + "/delete", remove_page)
    router.add_get(one + "/report.pdf", report_pdf)
    registry = app[keys.API]
    registry.schemas["ConsultationAttachment"] = ATTACHMENT_SCHEMA
    for operation, handler in API_ROUTES:
        registry.add(app, operation, handler)
