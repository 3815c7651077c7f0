"""Question pages and API over HTTP: scope, hostile input, fake images."""

from __future__ import annotations

import io

from aiohttp import FormData
from PIL import Image

from commons.db import Database
from tests.helpers import api_token, create_account, csrf_from, login


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 80, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


async def ask_form(client, text: str, *, image: tuple[str, bytes, str] | None = None):
    token = await csrf_from(client, "/questions/new")
    form = FormData()
    form.add_field("board", "health_advice")
    form.add_field("text", text)
    form.add_field("publish_consent", "on")
    if image is not None:
        name, data, content_type = image
        form.add_field("images", data, filename=name, content_type=content_type)
    return await client.post(
        f"/questions?csrf_token={token}", data=form, allow_redirects=False
    )


async def test_question_with_script_and_a_real_photo(
    make_client, seeded: Database
) -> None:
    await create_account(seeded, "ann@example.cn", "couple")
    client = await make_client()
    await login(client, "ann@example.cn")
    hostile = "<script>alert(1)</script> [点我](javascript:alert(2)) 孕期能吃螃蟹吗"
    response = await ask_form(
        client, hostile, image=("scan.png", png_bytes(), "image/png")
    )
    assert response.status == 303
    page = await client.get(response.headers["Location"])
    html = await page.text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html
    image_url = html.split('<img src="')[1].split('"')[0]
    image = await client.get(image_url)
    assert (image.status, image.content_type) == (200, "image/png")
    assert await image.read() == png_bytes()


async def test_fake_image_is_rejected_and_nothing_is_saved(
    make_client, seeded: Database
) -> None:
    await create_account(seeded, "ann@example.cn", "couple")
    client = await make_client()
    await login(client, "ann@example.cn")
    fake = b"\x89PNG\r\n\x1a\n" + b"this is not really a png" * 10
    response = await ask_form(
        client, "看看这张B超", image=("ultra.png", fake, "image/png")
    )
    assert response.status == 422
    assert "not a JPEG or PNG image" in await response.text()
    assert await seeded["questions"].count_documents({}) == 0
    assert await seeded["question_images.files"].count_documents({}) == 0


async def test_other_couple_and_other_board_expert_get_404(
    make_client, seeded: Database
) -> None:
    ann = await create_account(seeded, "ann@example.cn", "couple")
    bo = await create_account(seeded, "bo@example.cn", "couple")
    mind = await create_account(
        seeded, "dr-mind", "expert", "610113000000", extra={"boards": ["mental_health"]}
    )
    client = await make_client()
    ann_headers = await api_token(seeded, ann)
    created = await client.post(
        "/api/v1/questions",
        headers=ann_headers,
        json={"board": "health_advice", "text": "NT几周做？"},
    )
    assert created.status == 201
    question_id = (await created.json())["id"]
    for user in (bo, mind):
        headers = await api_token(seeded, user)
        response = await client.get(f"/api/v1/questions/{question_id}", headers=headers)
        assert response.status == 404, user.username
        assert (await response.json())["error"]["code"] == "not_found"
    other = await make_client()
    await login(other, "bo@example.cn")
    page = await other.get(f"/questions/{question_id}")
    assert page.status == 404


async def test_api_danger_sign_returns_advice_and_bad_bodies_are_refused(
    make_client, seeded: Database
) -> None:
    ann = await create_account(seeded, "ann@example.cn", "couple")
    client = await make_client()
    headers = await api_token(seeded, ann)
    response = await client.post(
        "/api/v1/questions",
        headers=headers,
        json={"board": "mental_health", "text": "最近总是不想活了"},
    )
    body = await response.json()
    assert response.status == 201
    assert (body["urgent"], body["danger_signs"], body["advice"]) == (
        True,
        ["self_harm"],
        ["mental_health"],
    )
    too_long = await client.post(
        "/api/v1/questions",
        headers=headers,
        json={"board": "health_advice", "text": "问" * 2001},
    )
    assert too_long.status == 422
    assert (await too_long.json())["error"]["fields"] == {
        "text": "at most 2000 characters, got 2001"
    }
    unknown = await client.post(
        "/api/v1/questions", headers=headers, json={"board": "astrology", "text": "hi"}
    )
    assert (await unknown.json())["error"]["fields"] == {
        "board": "unknown board 'astrology'"
    }
    broken = await client.post(
        "/api/v1/questions",
        headers={**headers, "Content-Type": "application/json"},
        data=b"{not json",
    )
    assert broken.status == 400


async def test_expert_claim_race_over_the_api_has_one_winner(
    make_client, seeded: Database
) -> None:
    import asyncio

    ann = await create_account(seeded, "ann@example.cn", "couple")
    first = await create_account(seeded, "dr-a", "expert", "610113000000")
    second = await create_account(seeded, "dr-b", "expert", "610113000000")
    client = await make_client()
    created = await client.post(
        "/api/v1/questions",
        headers=await api_token(seeded, ann),
        json={"board": "baby_care", "text": "宝宝湿疹怎么办"},
    )
    question_id = (await created.json())["id"]
    headers = [await api_token(seeded, first), await api_token(seeded, second)]
    responses = await asyncio.gather(
        *(
            client.post(f"/api/v1/questions/{question_id}/claim", headers=h)
            for h in headers
        )
    )
    assert sorted(r.status for r in responses) == [200, 409]


async def test_the_answer_notice_reaches_the_couples_inbox_page(
    make_client, seeded: Database
) -> None:
    ann = await create_account(seeded, "ann@example.cn", "couple")
    expert = await create_account(seeded, "dr-a", "expert", "610113000000")
    client = await make_client()
    asked = await client.post(
        "/api/v1/questions",
        headers=await api_token(seeded, ann),
        json={"board": "baby_care", "text": "宝宝几个月添加辅食？"},
    )
    question_id = (await asked.json())["id"]
    headers = await api_token(seeded, expert)
    await client.post(f"/api/v1/questions/{question_id}/claim", headers=headers)
    answered = await client.post(
        f"/api/v1/questions/{question_id}/answer",
        headers=headers,
        json={"text": "满6月龄开始。"},
    )
    assert answered.status == 200
    await login(client, "ann@example.cn")
    page = await (await client.get("/school/inbox")).text()
    assert "专家已回复您的提问" in page
    assert f'href="/questions/{question_id}"' in page
