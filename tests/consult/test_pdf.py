"""The consultation report as PDF: it parses, holds the signed opinion and its
signature data in the reader's language, is scoped and audited, and says what
to install when no CJK font exists."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiohttp.test_utils import TestClient

from commons import audit
from commons.db import Database
from consult import pdf
from tests.consult.conftest import People
from tests.consult.test_web import api_as, create_via_api, move, soon
from tests.helpers import create_account

Client = TestClient[Any, Any]
SCRIPT = '<script>alert("hy")</script>'
ASSESSMENT = f"妊娠期高血压，{SCRIPT}"
RECOMMENDATIONS = "监测血压，一周后复查尿蛋白"
OPINION: dict[str, Any] = {
    "assessment": ASSESSMENT,
    "recommendations": RECOMMENDATIONS,
    "referral_advised": True,
    "follow_up_date": None,
    "body_markdown": "**建议**住院观察\n\n- 每日测血压两次",
}


async def signed_consultation(client: Client, db: Database, people: People) -> str:
    created = await create_via_api(client, await api_as(db, people.clinician))
    cid = str(created["id"])
    expert = await api_as(db, people.expert)
    for body in (
        {"action": "accept"},
        {"action": "schedule", "slot": {"start": soon(5)}},
        {"action": "start"},
        {"action": "end"},
    ):
        response = await move(client, expert, cid, **body)
        assert response.status == 200, await response.text()
    signed = await client.post(
        f"/api/v1/consultations/{cid}/opinion/signatures", json=OPINION, headers=expert
    )
    assert signed.status == 201, await signed.text()
    return cid


def pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def flat(text: str) -> str:
    # extraction breaks lines where the page wrapped them
    return "".join(text.split())


async def test_the_pdf_holds_the_signed_opinion_in_chinese(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await signed_consultation(client, consult_db, people)
    clinician = await api_as(consult_db, people.clinician)
    response = await client.get(f"/consultations/{cid}/report.pdf", headers=clinician)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == (
        f'inline; filename="consultation-{cid}.pdf"'
    )
    data = await response.read()
    assert data.startswith(b"%PDF-")
    text = flat(pdf_text(data))
    for expected in (
        "远程会诊报告",
        "小寨路街道(610113001000)",
        "雁塔区(610113000000)",
        "li-expert",
        "张某某",
        "血压升高两周",
        ASSESSMENT,
        RECOMMENDATIONS,
        "**建议**住院观察",
        "意见正文（Markdown）",
        "签名",
    ):
        assert flat(expected) in text, expected
    # the signature's SHA-256, as the API reports it
    versions = await client.get(
        f"/api/v1/consultations/{cid}/opinion", headers=clinician
    )
    digest = (await versions.json())["versions"][0]["sha256"]
    assert digest in text
    records = await audit.search(
        consult_db, audit.AuditQuery(action="consultation.report_pdf_downloaded")
    )
    assert [(r["object_id"], r["actor_id"]) for r in records] == [
        (cid, people.clinician.id)
    ]


async def test_the_pdf_follows_the_readers_language(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await signed_consultation(client, consult_db, people)
    expert = await api_as(consult_db, people.expert)
    response = await client.get(
        f"/consultations/{cid}/report.pdf",
        headers={**expert, "Accept-Language": "en"},
    )
    text = flat(pdf_text(await response.read()))
    for expected in ("Remote consultation report", "Case summary", "verified"):
        assert flat(expected) in text, expected
    assert "远程会诊报告" not in text


async def test_a_report_without_an_opinion_says_so(
    client: Client, consult_db: Database, people: People
) -> None:
    created = await create_via_api(client, await api_as(consult_db, people.clinician))
    expert = await api_as(consult_db, people.expert)
    response = await client.get(
        f"/consultations/{created['id']}/report.pdf",
        headers={**expert, "Accept-Language": "en"},
    )
    assert response.status == 200
    assert "No signed opinion yet." in pdf_text(await response.read())


async def test_another_street_and_couples_get_404(
    client: Client, consult_db: Database, people: People
) -> None:
    cid = await signed_consultation(client, consult_db, people)
    stranger = await api_as(consult_db, people.stranger)
    response = await client.get(f"/consultations/{cid}/report.pdf", headers=stranger)
    assert response.status == 404
    assert not (await response.read()).startswith(b"%PDF")
    couple = await api_as(
        consult_db, await create_account(consult_db, "couple1", "couple")
    )
    response = await client.get(f"/consultations/{cid}/report.pdf", headers=couple)
    assert response.status == 404


async def test_without_a_cjk_font_the_error_says_what_to_install(
    client: Client,
    consult_db: Database,
    people: People,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cid = await signed_consultation(client, consult_db, people)
    monkeypatch.setattr(pdf, "FONT_CANDIDATES", (tmp_path / "missing.ttc",))
    clinician = await api_as(consult_db, people.clinician)
    response = await client.get(f"/consultations/{cid}/report.pdf", headers=clinician)
    assert response.status == 503
    text = await response.text()
    assert "install the Debian package fonts-wqy-zenhei or fonts-noto-cjk" in text
    assert "missing.ttc" in text


def test_the_font_search_takes_the_first_installed_file(tmp_path: Path) -> None:
    second = tmp_path / "b.ttf"
    second.write_bytes(b"font")
    assert pdf.find_cjk_font([tmp_path / "a.ttc", second]) == second
    with pytest.raises(pdf.FontMissing) as refused:
        pdf.find_cjk_font([tmp_path / "a.ttc"])
    assert refused.value.message == (
        "the PDF report needs a font with Chinese characters and none is installed "
        "(looked for a.ttc); install the Debian package fonts-wqy-zenhei or "
        "fonts-noto-cjk"
    )
