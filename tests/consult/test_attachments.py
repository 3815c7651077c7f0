"""Consultation attachments over real HTTP: content checks, size limits, scope,
thumbnails and DICOM renders, the upload form's CSRF and script in names."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy
import pydicom
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from commons import audit
from commons.db import Database
from commons.errors import TooLarge
from commons.identity import now_utc
from consult import attachments, store
from consult.attachments import MEGABYTE, AttachmentStore
from consult.models import parse_request
from tests.consult.conftest import People, actor_of, request_values
from tests.consult.test_web import api_as, as_user, create_via_api
from tests.helpers import csrf_from, login

Client = TestClient[Any, Any]
SCRIPT_NAME = '<script>alert("hy")</script>.png'
DICOM_UID = UID("1.2.826.0.1.3680043.8.498.1")


# files made in the test


def png_bytes(width: int = 640, height: int = 480) -> bytes:
    image = Image.new("RGB", (width, height), (200, 30, 90))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (100, 60), (10, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


def pdf_bytes(padding: int = 0) -> bytes:
    """A small well-formed PDF, padded with a comment to reach a size."""
    body = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    )
    filler = b"%" + b"x" * max(padding - len(body) - 40, 0) + b"\n"
    return body + filler + b"trailer<</Root 1 0 R>>\n%%EOF\n"


def dicom_bytes(rows: int = 16, columns: int = 24) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = DICOM_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = DICOM_UID
    dataset.Modality = "US"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    ramp = numpy.arange(rows * columns, dtype=numpy.uint16).reshape(rows, columns)
    dataset.PixelData = (ramp * 10).tobytes()
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def fake_dicom() -> bytes:
    return b"\0" * 128 + b"DICM" + b"this is a renamed text file, not DICOM\n" * 20


def form(*files: tuple[str, bytes, str]) -> FormData:
    data = FormData()
    for name, content, media_type in files:
        # a file object: aiohttp streams it rather than copying megabytes
        data.add_field(
            "files", io.BytesIO(content), filename=name, content_type=media_type
        )
    return data


# helpers


async def sent_consultation(client: Client, db: Database, people: People) -> str:
    created = await create_via_api(client, await api_as(db, people.clinician))
    return str(created["id"])


async def upload(
    client: Client, headers: dict[str, str], cid: str, *files: tuple[str, bytes, str]
) -> Any:
    return await client.post(
        f"/api/v1/consultations/{cid}/attachments", data=form(*files), headers=headers
    )


async def listed(client: Client, headers: dict[str, str], cid: str) -> Any:
    response = await client.get(
        f"/api/v1/consultations/{cid}/attachments", headers=headers
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def actions(db: Database, cid: str) -> list[tuple[str, str]]:
    records = await audit.search(db, audit.AuditQuery(object_id=cid), limit=200)
    return [
        (r["action"], r["outcome"])
        for r in reversed(records)
        if "attachment" in r["action"]
    ]


# tests


async def test_images_pdf_and_dicom_are_stored_listed_and_shown(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    png, dicom = png_bytes(), dicom_bytes()
    response = await upload(
        client, clinician, cid,
        ("超声.png", png, "image/png"),
        ("photo.jpg", jpeg_bytes(), "image/jpeg"),
        ("检查报告.pdf", pdf_bytes(), "application/pdf"),
        ("ct.dcm", dicom, "application/octet-stream"),
    )  # fmt: skip
    assert response.status == 201, await response.text()
    items = (await response.json())["items"]
    assert [(i["filename"], i["media_type"], i["size"]) for i in items] == [
        ("超声.png", "image/png", len(png)),
        ("photo.jpg", "image/jpeg", len(jpeg_bytes())),
        ("检查报告.pdf", "application/pdf", len(pdf_bytes())),
        ("ct.dcm", "application/dicom", len(dicom)),
    ]
    png_id, _, pdf_id, dicom_id = (i["id"] for i in items)
    base = f"/consultations/{cid}/attachments"
    assert [(i["thumbnail_url"], i["render_url"]) for i in items] == [
        (f"{base}/{png_id}/thumbnail", None),
        (f"{base}/{items[1]['id']}/thumbnail", None),
        (None, None),
        (f"{base}/{dicom_id}/thumbnail", f"{base}/{dicom_id}/render"),
    ]
    # the invited expert sees the same list
    expert = await api_as(consult_db, people.expert)
    body = await listed(client, expert, cid)
    assert [i["id"] for i in body["items"]] == [i["id"] for i in items]
    total = sum(i["size"] for i in items)
    assert (body["used_bytes"], body["max_total_bytes"]) == (total, 100 * MEGABYTE)

    original = await client.get(f"{base}/{png_id}", headers=expert)
    assert original.status == 200
    assert original.headers["Content-Type"] == "image/png"
    assert original.headers["Content-Disposition"] == (
        f'inline; filename="attachment-{png_id}.png"; '
        "filename*=UTF-8''%E8%B6%85%E5%A3%B0.png"
    )
    assert await original.read() == png
    document = await client.get(f"{base}/{pdf_id}", headers=expert)
    assert document.headers["Content-Type"] == "application/pdf"
    assert document.headers["Content-Disposition"].startswith("inline; ")
    # a browser cannot show DICOM: the original is a download, the render a PNG
    raw = await client.get(
        f"/api/v1/consultations/{cid}/attachments/{dicom_id}/content", headers=expert
    )
    assert raw.headers["Content-Type"] == "application/dicom"
    assert raw.headers["Content-Disposition"].startswith("attachment; ")
    assert await raw.read() == dicom
    render = await client.get(f"{base}/{dicom_id}/render", headers=expert)
    assert render.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(await render.read())) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (24, 16), "L")
        assert image.getextrema() == (0, 255)
    thumb = await client.get(f"{base}/{png_id}/thumbnail", headers=expert)
    assert thumb.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(await thumb.read())) as image:
        assert (image.format, image.size) == ("JPEG", (320, 240))

    assert await actions(consult_db, cid) == [
        *[("consultation.attachment_added", "ok")] * 4,
        ("consultation.attachments_listed", "ok"),
        ("consultation.attachment_viewed", "ok"),
        ("consultation.attachment_viewed", "ok"),
        ("consultation.attachment_viewed", "ok"),
        ("consultation.attachment_viewed", "ok"),
    ]


async def test_a_file_that_claims_to_be_a_png_but_is_not_is_refused(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    broken = b"\x89PNG\r\n\x1a\n" + b"not really an image" * 50
    for name, content in (("scan.png", broken), ("notes.png", b"plain text\n" * 9)):
        response = await upload(client, clinician, cid, (name, content, "image/png"))
        assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["fields"] == {
        "files": "'notes.png': expected a JPEG or PNG image, a PDF or a DICOM "
        "file, and its content is none of these"
    }
    # the good file of a request with a bad one is not kept either
    mixed = await upload(
        client, clinician, cid,
        ("good.png", png_bytes(), "image/png"), ("scan.png", broken, "image/png"),
    )  # fmt: skip
    assert mixed.status == 422
    assert (await mixed.json())["error"]["fields"] == {
        "files": "'scan.png': it does not decode as a JPEG or PNG image"
    }
    body = await listed(client, clinician, cid)
    assert (body["items"], body["used_bytes"]) == ([], 0)
    files = consult_db[f"{attachments.BUCKET}.files"]
    assert await files.count_documents({}) == 0
    previews = consult_db[f"{attachments.PREVIEWS}.files"]
    assert await previews.count_documents({}) == 0


async def test_dicom_is_parsed_and_a_fake_is_refused(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    fake = await upload(
        client, clinician, cid, ("mri.dcm", fake_dicom(), "application/dicom")
    )
    assert fake.status == 422
    assert (await fake.json())["error"]["fields"] == {
        "files": "'mri.dcm': its DICOM file meta lacks a transfer syntax or SOP class"
    }
    truncated = dicom_bytes()[:-100]
    short = await upload(client, clinician, cid, ("cut.dcm", truncated, "x/y"))
    assert short.status == 422
    assert (await short.json())["error"]["fields"] == {
        "files": "'cut.dcm': its pixel data is shorter than its image size says"
    }
    real = await upload(
        client, clinician, cid, ("mri.dcm", dicom_bytes(), "application/dicom")
    )
    assert real.status == 201
    assert [i["media_type"] for i in (await real.json())["items"]] == [
        "application/dicom"
    ]


async def test_a_file_over_20_mb_is_refused_while_it_streams(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    big = pdf_bytes(padding=21 * MEGABYTE)
    response = await upload(client, clinician, cid, ("big.pdf", big, "application/pdf"))
    assert response.status == 413
    assert (await response.json())["error"] == {
        "code": "too_large",
        "message": "files: 'big.pdf' is too large; each file may be up to 20 MB",
    }
    assert (await listed(client, clinician, cid))["items"] == []
    assert await actions(consult_db, cid) == [
        ("consultation.attachment_added", "refused"),
        ("consultation.attachments_listed", "ok"),
    ]


async def test_files_over_100_mb_per_consultation_are_refused(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    # 95 MB in five files, then 6 MB more in two ways
    chunk = pdf_bytes(padding=19 * MEGABYTE)
    for n in range(5):
        response = await upload(
            client, clinician, cid, (f"part{n}.pdf", chunk, "application/pdf")
        )
        assert response.status == 201, await response.text()
    used = 5 * len(chunk)
    six = pdf_bytes(padding=6 * MEGABYTE)
    declared = await upload(client, clinician, cid, ("six.pdf", six, "application/pdf"))
    assert declared.status == 413
    message = (await declared.json())["error"]["message"]
    assert message == (
        "the upload is 6 MB and this consultation has 5 MB of its 100 MB "
        "left; each file may be up to 20 MB"
    )

    async def stream() -> AsyncIterator[bytes]:
        # no Content-Length: the limit is found while reading
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="files"; '
        yield b'filename="six.pdf"\r\nContent-Type: application/pdf\r\n\r\n'
        for start in range(0, len(six), MEGABYTE):
            yield six[start : start + MEGABYTE]
        yield b"\r\n--b0undary--\r\n"

    chunked = await client.post(
        f"/api/v1/consultations/{cid}/attachments",
        data=stream(),
        headers={
            **clinician,
            "Content-Type": "multipart/form-data; boundary=b0undary",
        },
    )
    assert chunked.status == 413
    assert (await chunked.json())["error"]["message"] == (
        "files: 'six.pdf' is too large; the consultation's files may total "
        "100 MB and 5 MB are left"
    )
    assert (await listed(client, clinician, cid))["used_bytes"] == used

    # two uploads race for the last 5 MB: exactly one fits
    four = pdf_bytes(padding=4 * MEGABYTE)
    racing = await asyncio.gather(
        upload(client, clinician, cid, ("a.pdf", four, "application/pdf")),
        upload(client, clinician, cid, ("b.pdf", four, "application/pdf")),
    )
    assert sorted(response.status for response in racing) == [201, 413]
    assert await AttachmentStore(consult_db).used_bytes(cid) == used + len(four)
    files = consult_db[f"{attachments.BUCKET}.files"]
    assert await files.count_documents({"metadata.consultation_id": cid}) == 6


async def test_a_2_gb_upload_is_refused_from_its_headers_alone(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    started = time.perf_counter()
    head = (
        f"POST /api/v1/consultations/{cid}/attachments HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\n"
        f"Authorization: {clinician['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {2 * 1024**3}\r\n\r\n"
    )
    # the headers and a first line of body; the other 2 GB never come
    writer.write(head.encode() + b"--x\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large\r\n"
    assert elapsed < 2
    assert (await listed(client, clinician, cid))["used_bytes"] == 0
    assert await actions(consult_db, cid) == [
        ("consultation.attachment_added", "refused"),
        ("consultation.attachments_listed", "ok"),
    ]


async def test_another_streets_clinician_gets_404_for_every_file_route(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    response = await upload(
        client, clinician, cid,
        ("a.png", png_bytes(), "image/png"), ("b.dcm", dicom_bytes(), "x/y"),
    )  # fmt: skip
    png_id, dicom_id = (i["id"] for i in (await response.json())["items"])
    stranger = await api_as(consult_db, people.stranger)
    base = f"/consultations/{cid}/attachments"
    for path in (
        base,
        f"{base}/{png_id}",
        f"{base}/{png_id}/thumbnail",
        f"{base}/{dicom_id}/render",
        f"/api/v1{base}",
        f"/api/v1{base}/{png_id}/content",
        f"/consultations/{cid}/report.pdf",
    ):
        refused = await client.get(path, headers=stranger)
        assert refused.status == 404, path
    assert (
        await upload(client, stranger, cid, ("c.png", png_bytes(), "x"))
    ).status == 404
    # a real file id under another consultation is not found either
    other = await sent_consultation(client, consult_db, people)
    crossed = await client.get(
        f"/consultations/{other}/attachments/{png_id}", headers=clinician
    )
    assert crossed.status == 404
    assert (await client.get(f"{base}/nothex", headers=clinician)).status == 404


async def test_script_in_a_file_name_is_shown_as_text(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    response = await upload(client, clinician, cid, (SCRIPT_NAME, png_bytes(), "x"))
    item = (await response.json())["items"][0]
    assert item["filename"] == SCRIPT_NAME
    page = await as_user(make_client, "wang")
    for path in (f"/consultations/{cid}", f"/consultations/{cid}/attachments"):
        html = await (await page.get(path)).text()
        assert SCRIPT_NAME not in html
        assert "&lt;script&gt;alert(&#34;hy&#34;)&lt;/script&gt;.png" in html, path
    served = await page.get(f"/consultations/{cid}/attachments/{item['id']}")
    assert served.headers["Content-Disposition"] == (
        f"inline; filename=\"attachment-{item['id']}.png\"; filename*=UTF-8''"
        "%3Cscript%3Ealert%28%22hy%22%29%3C%2Fscript%3E.png"
    )


async def test_the_upload_form_carries_its_csrf_token_in_the_query(
    make_client: Any, consult_db: Database, people: People
) -> None:
    api = await make_client()
    cid = await sent_consultation(api, consult_db, people)
    page = await as_user(make_client, "wang")
    html = await (await page.get(f"/consultations/{cid}")).text()
    action = re.search(
        r'action="(/consultations/[^"]+/attachments\?csrf_token=[^"]+)"', html
    )
    assert action is not None
    # without the token the body is not even read
    refused = await page.post(
        f"/consultations/{cid}/attachments",
        data=form(("a.png", png_bytes(), "image/png")),
        allow_redirects=False,
    )
    assert refused.status == 403
    sent = await page.post(
        action.group(1).replace("&amp;", "&"),
        data=form(("a.png", png_bytes(), "image/png")),
        allow_redirects=False,
    )
    assert sent.status == 303
    assert sent.headers["Location"] == f"/consultations/{cid}#attachments"
    token = await csrf_from(page, f"/consultations/{cid}")
    by_header = await page.post(
        f"/consultations/{cid}/attachments?next=attachments",
        data=form(("b.jpg", jpeg_bytes(), "image/jpeg")),
        headers={"X-CSRF-Token": token},
        allow_redirects=False,
    )
    assert by_header.headers["Location"] == f"/consultations/{cid}/attachments"
    listing = await (await page.get(f"/consultations/{cid}/attachments")).text()
    assert re.findall(r'data-testid="attachment-name">([^<]+)<', listing) == [
        "a.png",
        "b.jpg",
    ]
    # the stranger's session does not see the consultation at all
    stranger = await as_user(make_client, "liu")
    assert (await stranger.get(f"/consultations/{cid}/attachments")).status == 404


async def form_post(client: Client, username: str, path: str) -> Any:
    client.session.cookie_jar.clear()
    await login(client, username)
    token = await csrf_from(client, "/account")
    return await client.post(
        path, headers={"X-CSRF-Token": token}, allow_redirects=False
    )


async def test_files_are_removed_by_their_uploader_in_a_draft_only(
    client: Client, consult_db: Database, people: People
) -> None:
    clinician = await api_as(consult_db, people.clinician)
    response = await client.post(
        "/api/v1/consultations",
        json=(await _draft_body()),
        headers=clinician,
    )
    cid = (await response.json())["id"]
    added = await upload(client, clinician, cid, ("a.png", png_bytes(), "image/png"))
    first = (await added.json())["items"][0]["id"]
    # the delete button is a page form: a session and its CSRF token
    path = f"/consultations/{cid}/attachments/{first}/delete"
    assert (await form_post(client, people.colleague.username, path)).status == 403
    removed = await form_post(client, people.clinician.username, path)
    assert removed.status == 303
    assert await listed(client, clinician, cid) == {
        "items": [],
        "used_bytes": 0,
        "max_total_bytes": 100 * MEGABYTE,
        "max_file_bytes": 20 * MEGABYTE,
    }
    added = await upload(client, clinician, cid, ("b.png", png_bytes(), "image/png"))
    second = (await added.json())["items"][0]["id"]
    sent = await client.post(
        f"/api/v1/consultations/{cid}/transitions",
        json={"action": "submit"},
        headers=clinician,
    )
    assert sent.status == 200
    kept = await form_post(
        client,
        people.clinician.username,
        f"/consultations/{cid}/attachments/{second}/delete",
    )
    assert kept.status == 409
    assert [i["id"] for i in (await listed(client, clinician, cid))["items"]] == [
        second
    ]


async def test_thumbnails_are_cached_by_the_browser(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await sent_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    added = await upload(client, clinician, cid, ("a.png", png_bytes(), "image/png"))
    item = (await added.json())["items"][0]
    first = await client.get(item["thumbnail_url"], headers=clinician)
    assert first.status == 200
    etag = first.headers["ETag"]
    assert etag == f'"{item["id"]}-thumbnail"'
    assert first.headers["Cache-Control"] == "private, max-age=3600"
    again = await client.get(
        item["thumbnail_url"], headers={**clinician, "If-None-Match": etag}
    )
    assert again.status == 304
    # a PDF has no thumbnail
    added = await upload(client, clinician, cid, ("b.pdf", pdf_bytes(), "x/y"))
    pdf_id = (await added.json())["items"][0]["id"]
    missing = await client.get(
        f"/consultations/{cid}/attachments/{pdf_id}/thumbnail", headers=clinician
    )
    assert missing.status == 404


async def _draft_body() -> dict[str, Any]:
    from tests.consult.test_web import api_request

    return api_request()


def test_dicom_check_names_what_is_wrong() -> None:
    assert attachments.dicom_problem(dicom_bytes()) is None
    no_sop = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    no_sop.SOPClassUID = "1.2.3"
    out = io.BytesIO()
    no_sop.save_as(out)
    assert attachments.dicom_problem(out.getvalue()) == (
        "its SOP class does not match its file meta"
    )


def test_sizes_read_as_people_say_them() -> None:
    sizes = (0, 1, 1536, 300_000, MEGABYTE, 21 * MEGABYTE + 60_000)
    assert [attachments.size_text(n) for n in sizes] == [
        "0 KB", "1 KB", "2 KB", "293 KB", "1 MB", "21.1 MB",
    ]  # fmt: skip


async def test_the_quota_is_claimed_atomically_by_racing_uploads(
    consult_db: Database, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setattr(attachments, "MAX_TOTAL_BYTES", 10_000)
    request = parse_request(request_values(), now=now_utc())
    doc = await store.create(
        consult_db, people.clinician, request, actor=actor_of(people.clinician)
    )
    files = AttachmentStore(consult_db)
    checked = await attachments.prepare(pdf_bytes(padding=6000), filename="a.pdf")
    results = await asyncio.gather(
        *(files.put(doc, people.clinician, checked) for _ in range(4)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, TooLarge)]
    kept = [r for r in results if isinstance(r, attachments.Attachment)]
    assert (len(kept), len(refused)) == (1, 3)
    assert refused[0].message == (
        "files: the consultation's files may total 10 KB; 4 KB are left and "
        "this file is 6 KB"
    )
    assert await files.used_bytes(doc["_id"]) == kept[0].size
    assert [a.id for a in await files.of_consultation(doc["_id"])] == [kept[0].id]
