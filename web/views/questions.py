"""Expert questions (专家答疑): asking, the expert queue, answers and the public FAQ."""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web

from commons import audit, files, identity
from commons.errors import BadRequest, Invalid, NotFound
from commons.identity import Role, User
from commons.markdown import render as render_markdown
from school import question_store as store
from school.danger_signs import Advice
from school.questions import MAX_IMAGES, Board, QuestionInput
from web import jobs, keys
from web.apispec import Operation, query_parameter
from web.context import actor, gettext, require_user
from web.forms import form_data, json_body, whole_number
from web.render import render_html

IMAGE_BUCKET = "question_images"
MAX_IMAGE_BYTES = 5 * 1024 * 1024
DAILY_QUESTION_LIMIT = 5
# multipart text fields are small; images are read part by part with a cap
MAX_TEXT_PART_BYTES = 16 * 1024
# the ask form has six fields and three images; anything past this is abuse
MAX_PARTS = 12


def boards(request: web.Request) -> list[tuple[str, str]]:
    translate = gettext(request)
    names = {
        Board.HEALTH_ADVICE: translate("Health advice"),
        Board.EXPERT_CLINIC: translate("Expert clinic"),
        Board.BABY_CARE: translate("Baby care"),
        Board.CHILD_EDUCATION: translate("Child education"),
        Board.MENTAL_HEALTH: translate("Mental health"),
    }
    return [(board.value, names[board]) for board in Board]


def _file_store(request: web.Request) -> files.FileStore:
    return files.FileStore(request.app[keys.DATABASE], IMAGE_BUCKET)


def _thread_html(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**message, "html": render_markdown(message["body"])}
        for message in document["messages"]
    ]


# the asker


async def index(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE, Role.EXPERT)
    database = request.app[keys.DATABASE]
    if user.role is Role.COUPLE:
        mine = [
            doc
            async for doc in database[store.QUESTIONS]
            .find({"owner_id": user.id}, {"messages": 0})
            .sort("created_at", -1)
            .limit(100)
        ]
        return render_html(
            request, "questions/mine.html", questions=mine, boards=dict(boards(request))
        )
    board = request.query.get("board", "")
    urgent_only = request.query.get("urgent") == "1"
    await store.expire_leases(database)
    view = await store.queue(
        database, user, board=board or None, urgent_only=urgent_only
    )
    held = await store.claimed_by(database, user)
    return render_html(
        request,
        "questions/queue.html",
        view=view,
        held=held,
        board=board,
        urgent_only=urgent_only,
        boards=boards(request),
        board_names=dict(boards(request)),
        my_boards=[b.value for b in store.expert_boards(user)],
    )


async def new_question_page(request: web.Request) -> web.Response:
    require_user(request, Role.COUPLE)
    return render_html(
        request, "questions/ask.html", boards=boards(request), errors={}, values={}
    )


async def ask(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    fields, images = await _read_question_form(request)
    database = request.app[keys.DATABASE]
    try:
        question = QuestionInput(
            board=fields.get("board", ""),
            text=fields.get("text", ""),
            link_plan=fields.get("link_plan") == "on",
            publish_consent=fields.get("publish_consent") == "on",
        )
        image_ids = await _store_images(request, user, images)
        asked = await store.ask(
            database,
            user,
            question,
            image_ids=image_ids,
            plan_context=await _plan_context(request, user)
            if question.link_plan
            else None,
            daily_limit=DAILY_QUESTION_LIMIT,
        )
    except Invalid as exc:
        return render_html(
            request,
            "questions/ask.html",
            status=422,
            boards=boards(request),
            errors=exc.field_errors,
            values=fields,
        )
    await audit.record(
        database,
        actor(request),
        "question.asked",
        object_kind="question",
        object_id=asked.question["_id"],
        detail={"urgent": asked.question["urgent"]},
    )
    raise web.HTTPSeeOther(f"/questions/{asked.question['_id']}")


async def _read_question_form(
    request: web.Request,
) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Text fields and up to MAX_IMAGES images, each capped while it streams in."""
    if request.content_type != "multipart/form-data":
        form = await form_data(request)
        return form, []
    fields: dict[str, str] = {}
    images: list[tuple[str, bytes]] = []
    reader = await request.multipart()
    parts = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > MAX_PARTS:
            raise Invalid({"form": f"at most {MAX_PARTS} fields and files"})
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "images" and part.filename:
            if len(images) >= MAX_IMAGES:
                raise Invalid({"images": f"at most {MAX_IMAGES} images"})
            data = await files.read_part_limited(part, MAX_IMAGE_BYTES, field="images")
            if data:
                images.append((part.filename, data))
        else:
            raw = await files.read_part_limited(
                part, MAX_TEXT_PART_BYTES, field=part.name
            )
            try:
                fields[part.name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"field {part.name!r} is not UTF-8 text") from None
    return fields, images


async def _store_images(
    request: web.Request, user: User, images: list[tuple[str, bytes]]
) -> list[str]:
    checked = [
        (name, data, await files.check_image(data, field="images"))
        for name, data in images
    ]
    stored = []
    for name, data, media_type in checked:
        saved = await _file_store(request).put(
            data, filename=name, media_type=media_type, metadata={"owner_id": user.id}
        )
        stored.append(saved.id)
    return stored


async def _plan_context(request: web.Request, user: User) -> dict[str, Any] | None:
    """The gestational week and risks the expert sees, if the couple is enrolled."""
    enrolment = await request.app[keys.DATABASE]["enrolments"].find_one(
        {"owner_id": user.id, "status": {"$ne": "withdrawn"}}, sort=[("created_at", -1)]
    )
    if enrolment is None:
        return None
    return {
        "enrolment_id": enrolment["_id"],
        "stage": enrolment.get("stage"),
        "edd": str(enrolment["edd"]) if enrolment.get("edd") else None,
        "risk_factors": list(enrolment.get("risk_factors") or []),
    }


async def _read_question(request: web.Request) -> tuple[User, dict[str, Any]]:
    """The question in the URL if the caller may see it; the read is audited."""
    user = require_user(request, Role.COUPLE, Role.EXPERT)
    database = request.app[keys.DATABASE]
    document = await store.for_viewer(database, user, request.match_info["question_id"])
    await audit.record(
        database,
        actor(request),
        "question.read",
        object_kind="question",
        object_id=document["_id"],
    )
    return user, document


async def question_page(request: web.Request) -> web.Response:
    user, document = await _read_question(request)
    database = request.app[keys.DATABASE]
    is_expert = user.role is Role.EXPERT
    context: dict[str, Any] = {
        "question": document,
        "thread": _thread_html(document),
        "boards": dict(boards(request)),
        "board_list": boards(request),
        "is_expert": is_expert,
        "advice": _advice_for(document) if not is_expert else [],
        "draft": "",
        "templates": [],
        "faq_text": None,
        "lease_lost": request.query.get("lease") == "lost",
    }
    if is_expert:
        context["draft"] = await store.draft_of(database, user, document["_id"])
        context["templates"] = await store.templates_of(database, user)
    return render_html(request, "questions/question.html", **context)


def _advice_for(document: dict[str, Any]) -> list[str]:
    if not document["urgent"] or document["state"] == "closed":
        return []
    from school.danger_signs import default_rules

    advice = {
        rule.advice for rule in default_rules() if rule.id in document["danger_signs"]
    }
    ordered = [Advice.MENTAL_HEALTH] if Advice.MENTAL_HEALTH in advice else []
    return [*(a.value for a in ordered), Advice.HOSPITAL.value]


async def image(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE, Role.EXPERT)
    database = request.app[keys.DATABASE]
    document = await store.for_viewer(database, user, request.match_info["question_id"])
    file_id = request.match_info["file_id"]
    if file_id not in document["image_ids"]:
        raise NotFound(f"no image with id {file_id!r}")
    stored, data = await _file_store(request).get(
        file_id, owner_filter={"owner_id": document["owner_id"]}
    )
    return web.Response(
        body=data,
        content_type=stored.media_type,
        headers={"Content-Disposition": "inline", "Cache-Control": "private, no-store"},
    )


async def follow_up(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    form = await form_data(request)
    question_id = request.match_info["question_id"]
    await store.follow_up(
        request.app[keys.DATABASE], user, question_id, form.get("text", "")
    )
    raise web.HTTPSeeOther(f"/questions/{question_id}")


async def close(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    form = await form_data(request)
    rating_text = form.get("rating", "")
    rating = whole_number(rating_text, maximum=5)
    if rating_text and not rating:
        raise Invalid({"rating": f"expected 1 to 5 stars, got {rating_text[:10]!r}"})
    question_id = request.match_info["question_id"]
    await store.close_by_asker(
        request.app[keys.DATABASE],
        user,
        question_id,
        rating,
    )
    raise web.HTTPSeeOther(f"/questions/{question_id}")


# the expert


async def claim(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    question_id = request.match_info["question_id"]
    await store.claim(request.app[keys.DATABASE], user, question_id)
    raise web.HTTPSeeOther(f"/questions/{question_id}")


async def claim_next(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    form = await form_data(request)
    document = await store.claim_next(
        request.app[keys.DATABASE], user, board=form.get("board") or None
    )
    raise web.HTTPSeeOther(
        f"/questions/{document['_id']}" if document else "/questions"
    )


async def release(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    await store.release(
        request.app[keys.DATABASE], user, request.match_info["question_id"]
    )
    raise web.HTTPSeeOther("/questions")


async def answer(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    form = await form_data(request)
    question_id = request.match_info["question_id"]
    database = request.app[keys.DATABASE]
    try:
        await store.answer(database, user, question_id, form.get("answer", ""))
    except store.LeaseLost:
        raise web.HTTPSeeOther(f"/questions/{question_id}?lease=lost") from None
    await audit.record(
        database,
        actor(request),
        "question.answered",
        object_kind="question",
        object_id=question_id,
    )
    if form.get("save_template") == "on":
        await store.save_template(
            database, user, form.get("template_title", ""), form.get("answer", "")
        )
    raise web.HTTPSeeOther(f"/questions/{question_id}")


async def transfer(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    form = await form_data(request)
    await store.transfer(
        request.app[keys.DATABASE],
        user,
        request.match_info["question_id"],
        form.get("board", ""),
        form.get("reason", ""),
    )
    raise web.HTTPSeeOther("/questions")


async def expert_close(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    form = await form_data(request)
    question_id = request.match_info["question_id"]
    await store.close_by_expert(
        request.app[keys.DATABASE],
        user,
        question_id,
        form.get("reason", ""),
        form.get("note", ""),
    )
    raise web.HTTPSeeOther("/questions")


async def publish(request: web.Request) -> web.Response:
    user = require_user(request, Role.EXPERT)
    form = await form_data(request)
    question_id = request.match_info["question_id"]
    database = request.app[keys.DATABASE]
    faq_id = await store.publish(
        database,
        user,
        question_id,
        question_text=form.get("faq_question", ""),
        answer_text=form.get("faq_answer", ""),
    )
    await audit.record(
        database,
        actor(request),
        "question.published",
        object_kind="faq",
        object_id=faq_id,
    )
    raise web.HTTPSeeOther(f"/faq/{faq_id}")


async def dashboard(request: web.Request) -> web.Response:
    require_user(request, Role.EXPERT, Role.ADMIN)
    database = request.app[keys.DATABASE]
    rows = await store.response_times(database)
    expert_ids = [r["expert_id"] for r in rows if r["expert_id"]]
    names = {
        doc["_id"]: doc.get("display_name") or doc["username"]
        async for doc in database[identity.USERS].find(
            {"_id": {"$in": expert_ids}}, {"display_name": 1, "username": 1}
        )
    }
    waiting = {
        board: await database[store.QUESTIONS].count_documents(
            {"state": "waiting", "board": board}
        )
        for board, _ in boards(request)
    }
    return render_html(
        request,
        "questions/dashboard.html",
        rows=rows,
        names=names,
        boards=dict(boards(request)),
        waiting=waiting,
    )


# the public FAQ


async def faq(request: web.Request) -> web.Response:
    text = request.query.get("q", "").strip()[:100]
    board = request.query.get("board", "")
    if board and board not in set(Board):
        board = ""
    found = await store.search_faq(
        request.app[keys.DATABASE], text, board=board or None
    )
    return render_html(
        request,
        "questions/faq.html",
        entries=found,
        query=text,
        board=board,
        boards=boards(request),
    )


async def faq_entry(request: web.Request) -> web.Response:
    entry = await request.app[keys.DATABASE][store.FAQ].find_one(
        {"_id": request.match_info["faq_id"]}
    )
    if entry is None:
        raise NotFound("no such FAQ entry")
    return render_html(
        request,
        "questions/faq_entry.html",
        entry=entry,
        answer_html=render_markdown(entry["answer"]),
        boards=dict(boards(request)),
    )


# JSON API


def _question_json(document: dict[str, Any], viewer: User) -> dict[str, Any]:
    result = {
        "id": document["_id"],
        "board": document["board"],
        "text": document["text"],
        "state": document["state"],
        "urgent": document["urgent"],
        "danger_signs": document["danger_signs"],
        "created_at": document["created_at"].isoformat(),
        "waiting_since": document["waiting_since"].isoformat(),
        "image_ids": document["image_ids"],
        "rating": document.get("rating"),
        "messages": [
            {
                "kind": m["kind"],
                "author_role": m["author_role"],
                "body": m["body"],
                "at": m["at"].isoformat(),
            }
            for m in document.get("messages", [])
        ],
    }
    if viewer.role is Role.EXPERT:
        result["plan_context"] = document.get("plan_context")
        result["claimed_by"] = document.get("claimed_by")
    return result


async def api_list(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE, Role.EXPERT)
    database = request.app[keys.DATABASE]
    if user.role is Role.COUPLE:
        documents = [
            doc
            async for doc in database[store.QUESTIONS]
            .find({"owner_id": user.id})
            .sort("created_at", -1)
            .limit(200)
        ]
        return web.json_response(
            {"items": [_question_json(d, user) for d in documents]}
        )
    await store.expire_leases(database)
    view = await store.queue(
        database,
        user,
        board=request.query.get("board") or None,
        urgent_only=request.query.get("urgent") == "true",
    )
    return web.json_response(
        {
            "items": [
                _question_json({**d, "messages": []}, user) for d in view.questions
            ],
            "waiting": view.waiting,
            "oldest_waiting_since": view.oldest_waiting_since.isoformat()
            if view.oldest_waiting_since
            else None,
        }
    )


async def api_ask(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    body = await json_body(request)
    for name in ("board", "text"):
        if not isinstance(body.get(name), str):
            raise Invalid({name: "required, a string"})
    question = QuestionInput(
        board=body["board"],
        text=body["text"],
        publish_consent=body.get("publish_consent") is True,
    )
    database = request.app[keys.DATABASE]
    asked = await store.ask(database, user, question, daily_limit=DAILY_QUESTION_LIMIT)
    await audit.record(
        database,
        actor(request),
        "question.asked",
        object_kind="question",
        object_id=asked.question["_id"],
    )
    return web.json_response(
        {
            **_question_json(asked.question, user),
            "advice": sorted(a.value for a in asked.advice),
        },
        status=201,
    )


async def api_get(request: web.Request) -> web.Response:
    user, document = await _read_question(request)
    return web.json_response(_question_json(document, user))


async def api_action(request: web.Request) -> web.Response:
    """POST /questions/{id}/{action}: the expert's and the asker's moves."""
    user = require_user(request, Role.COUPLE, Role.EXPERT)
    database = request.app[keys.DATABASE]
    question_id = request.match_info["question_id"]
    action = request.match_info["action"]
    body = await json_body(request) if request.can_read_body else {}
    text = body.get("text", "")
    if not isinstance(text, str):
        raise Invalid({"text": "expected a string"})
    expert_actions = {
        "claim": lambda: store.claim(database, user, question_id),
        "release": lambda: store.release(database, user, question_id),
        "answer": lambda: store.answer(database, user, question_id, text),
        "transfer": lambda: store.transfer(
            database, user, question_id, str(body.get("board", "")), text
        ),
    }
    asker_actions = {
        "follow-up": lambda: store.follow_up(database, user, question_id, text),
        "close": lambda: store.close_by_asker(
            database, user, question_id, _rating(body.get("rating"))
        ),
    }
    actions = expert_actions if user.role is Role.EXPERT else asker_actions
    if action not in actions:
        raise NotFound(f"no action {action!r} for a {user.role}")
    await actions[action]()
    await audit.record(
        database,
        actor(request),
        f"question.{action}",
        object_kind="question",
        object_id=question_id,
    )
    document = await store.for_viewer(database, user, question_id)
    return web.json_response(_question_json(document, user))


def _rating(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid({"rating": f"expected an integer 1 to 5, got {value!r}"})
    return value


async def api_faq(request: web.Request) -> web.Response:
    found = await store.search_faq(
        request.app[keys.DATABASE],
        request.query.get("q", "")[:100],
        board=request.query.get("board") or None,
    )
    return web.json_response(
        {
            "items": [
                {
                    "id": e["_id"],
                    "board": e["board"],
                    "question": e["question"],
                    "answer": e["answer"],
                    "published_at": e["published_at"].isoformat(),
                }
                for e in found
            ]
        }
    )


# periodic passes


async def service_level_pass(app: web.Application) -> None:
    database = app[keys.DATABASE]
    await store.expire_leases(database)
    await store.escalate_overdue(database)


QUESTION_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "board": {"type": "string", "enum": list(Board)},
        "text": {"type": "string"},
        "state": {"type": "string"},
        "urgent": {"type": "boolean"},
        "danger_signs": {"type": "array", "items": {"type": "string"}},
        "messages": {"type": "array", "items": {"type": "object"}},
    },
}


def setup(app: web.Application) -> None:
    app[keys.INDEX_SPECS].extend(store.INDEXES)
    router = app.router
    router.add_get("/questions", index)
    router.add_get("/questions/new", new_question_page)
    router.add_post("/questions", ask)
    router.add_post("/questions/next", claim_next)
    router.add_get("/questions/dashboard", dashboard)
    router.add_get("/questions/{question_id}", question_page)
    router.add_get("/questions/{question_id}/images/{file_id}", image)
    for name, handler in (
        ("follow-up", follow_up),
        ("close", close),
        ("claim", claim),
        ("release", release),
        ("answer", answer),
        ("transfer", transfer),
        ("expert-close", expert_close),
        ("publish", publish),
    ):
        router.add_post(f"/questions/{{question_id}}/{name}", handler)
    router.add_get("/faq", faq)
    router.add_get("/faq/{faq_id}", faq_entry)

    registry = app[keys.API]
    registry.schemas["Question"] = QUESTION_SCHEMA
    ref = {"$ref": "#/components/schemas/Question"}
    for operation, handler in (
        (
            Operation(
                method="GET",
                path="/questions",
                tag="questions",
                summary="A couple's own questions, or an expert's queue (urgent "
                "first, then oldest)",
                parameters=(
                    query_parameter("board", "expert queue: one board"),
                    query_parameter("urgent", "expert queue: true for urgent only"),
                ),
            ),
            api_list,
        ),
        (
            Operation(
                method="POST",
                path="/questions",
                tag="questions",
                success_status=201,
                summary="Ask a question (couples)",
                request_schema={
                    "type": "object",
                    "required": ["board", "text"],
                    "properties": {
                        "board": {"type": "string", "enum": list(Board)},
                        "text": {"type": "string", "maxLength": 2000},
                        "publish_consent": {"type": "boolean"},
                    },
                },
                response_schema=ref,
            ),
            api_ask,
        ),
        (
            Operation(
                method="GET",
                path="/questions/{question_id}",
                tag="questions",
                summary="One question with its thread",
                response_schema=ref,
            ),
            api_get,
        ),
        (
            Operation(
                method="POST",
                path="/questions/{question_id}/{action}",
                tag="questions",
                summary="Experts: claim, release, answer "
                "(text), transfer (board, text). Askers: follow-up (text), close "
                "(rating 1-5)",
                response_schema=ref,
                request_schema={
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "board": {"type": "string"},
                        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                    },
                },
            ),
            api_action,
        ),
        (
            Operation(
                method="GET",
                path="/faq",
                tag="questions",
                public=True,
                summary="Search the published, anonymised answers",
                parameters=(
                    query_parameter("q", "words to find"),
                    query_parameter("board", "one board"),
                ),
            ),
            api_faq,
        ),
    ):
        registry.add(app, operation, handler)
    jobs.add_periodic_job(app, "questions-service-level", service_level_pass, 60)
