"""Demo accounts for `huiyun serve --demo`: one per role, printed at start."""

from __future__ import annotations

import logging

from commons import identity
from commons.db import Database

logger = logging.getLogger(__name__)

DEMO_PASSWORD = "huiyun-demo-2026"
# (username, role, station code, display name, specialties, expert profile)
DEMO_ACCOUNTS: tuple[
    tuple[str, str, str | None, str, tuple[str, ...], dict[str, object]], ...
] = (
    ("demo-admin", "admin", "610100000000", "演示管理员", (), {}),
    ("demo-clinician", "clinician", "610113001000", "小寨路街道 王医生", (), {}),
    (
        "demo-expert",
        "expert",
        "610113000000",
        "雁塔区 李专家",
        ("产科", "妇科"),
        {
            "title": "主任医师",
            "registration_number": "110610000000001",
            "practice_years": 15,
            "on_duty": True,
        },
    ),
    ("demo-couple", "couple", None, "演示孕妈", (), {}),
)


async def seed(database: Database) -> list[tuple[str, str]]:
    """Create the demo accounts that do not exist yet; print every one of them."""
    for username, role, station, name, specialties, extra in DEMO_ACCOUNTS:
        if await identity.find_by_username(database, username) is not None:
            continue
        await identity.create_user(
            database,
            username=username,
            password=DEMO_PASSWORD,
            role=role,
            station_code=station,
            display_name=name,
            specialties=specialties,
            extra=extra,
        )
    accounts = [(username, role) for username, role, *_ in DEMO_ACCOUNTS]
    print(f"demo accounts (password: {DEMO_PASSWORD}):", flush=True)
    for username, role in accounts:
        print(f"  {role:<10} {username}", flush=True)
    return accounts
