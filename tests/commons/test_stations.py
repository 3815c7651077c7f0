"""The station network: the bundled Xi'an file, all-or-nothing import, export."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from commons import stations
from commons.db import Database
from commons.stations import LineError, StationFileError

BUNDLED = stations.bundled_division_file()
CITY = "610100000000"
YANTA = "610113000000"
XIAOZHAILU = "610113001000"
HEADER = "code,name,level,parent_code"


async def station_documents(database: Database) -> list[dict[str, Any]]:
    return [doc async for doc in database[stations.COLLECTION].find({}).sort("_id", 1)]


def bundled_lines() -> list[str]:
    return BUNDLED.decode("utf-8").splitlines()


def with_lines(replacements: dict[int, str], extra: tuple[str, ...] = ()) -> bytes:
    """The bundled file with some lines (1-based numbers) replaced or added."""
    lines = bundled_lines()
    for number, text in replacements.items():
        lines[number - 1] = text
    return ("\n".join([*lines, *extra]) + "\n").encode("utf-8")


@pytest.fixture
async def second_database(database: Database) -> AsyncIterator[Database]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    other = Database(client=database.client, db=database.client[name])
    try:
        yield other
    finally:
        await database.client.drop_database(name)


async def test_bundled_network_has_city_districts_and_streets(
    seeded: Database,
) -> None:
    documents = await station_documents(seeded)
    by_code = {doc["_id"]: doc for doc in documents}
    levels = [doc["level"] for doc in documents]
    assert (levels.count("city"), levels.count("district"), levels.count("street")) == (
        1,
        13,
        172,
    )
    assert by_code[CITY] == {
        "_id": CITY,
        "name": "西安市",
        "level": "city",
        "parent_code": None,
        "path": [CITY],
    }
    assert by_code[XIAOZHAILU] == {
        "_id": XIAOZHAILU,
        "name": "小寨路街道",
        "level": "street",
        "parent_code": YANTA,
        "path": [CITY, YANTA, XIAOZHAILU],
    }
    for doc in documents:
        parent = by_code.get(doc["parent_code"] or "")
        if doc["level"] == "district":
            assert parent is not None and parent["level"] == "city"
        if doc["level"] == "street":
            assert parent is not None and parent["level"] == "district"
        expected_path = (parent["path"] if parent else []) + [doc["_id"]]
        assert doc["path"] == expected_path
    streets_of_yanta = [d for d in documents if d["parent_code"] == YANTA]
    assert len(streets_of_yanta) == 10
    assert await stations.seed_if_empty(seeded) is None


async def test_second_import_changes_nothing(seeded: Database) -> None:
    before = await station_documents(seeded)
    result = await stations.import_stations(seeded, BUNDLED)
    assert result == stations.ImportResult(created=0, updated=0, unchanged=186)
    assert await station_documents(seeded) == before


async def test_import_updates_renamed_and_moved_stations(seeded: Database) -> None:
    data = (
        f"{HEADER}\n"
        f"{XIAOZHAILU},小寨路街道（新）,street,610102000000\n"
        "610113099000,新街道,street,610113000000\n"
    ).encode()
    result = await stations.import_stations(seeded, data)
    assert result == stations.ImportResult(created=1, updated=1, unchanged=0)
    moved = await stations.get_station(seeded, XIAOZHAILU)
    assert moved["name"] == "小寨路街道（新）"
    assert moved["path"] == [CITY, "610102000000", XIAOZHAILU]
    created = await stations.get_station(seeded, "610113099000")
    assert created["path"] == [CITY, YANTA, "610113099000"]


BAD_FILES: list[tuple[str, bytes, list[tuple[int, str]]]] = [
    (
        "unknown level",
        with_lines({5: "610104000000,莲湖区,county,610100000000"}),
        [(5, "unknown level 'county' (expected city, district or street)")],
    ),
    (
        "missing parent",
        with_lines({42: "610111001000,纺织城街道,street,610199000000"}),
        [
            (
                42,
                "parent 610199000000 is neither in the file nor an existing station",
            )
        ],
    ),
    (
        "duplicate code",
        with_lines({}, extra=("610113001000,小寨路街道,street,610113000000",)),
        [(188, "duplicate code 610113001000 (first on line 63)")],
    ),
    (
        "wrong header",
        with_lines({1: "code,name,level"}),
        [(1, "header must be code,name,level,parent_code, got 'code,name,level'")],
    ),
    (
        "wrong column count",
        with_lines({3: "610103000000,碑林区,district", 9: "610114000000,阎良区"}),
        [(3, "expected 4 columns, got 3"), (9, "expected 4 columns, got 2")],
    ),
    (
        "several bad lines",
        with_lines(
            {
                2: "6101,西安市,city,",
                7: "610112000000,,district,610100000000",
                21: "610102006000,自强路街道,street,610113001000",
            }
        ),
        [
            (2, "code '6101' must be 12 digits"),
            (7, "name is empty"),
            (
                21,
                "parent 610113001000 is a street; a street belongs to a district",
            ),
        ],
    ),
    (
        "full-width digits",
        with_lines({}, extra=("６１０１１３０９７０００,新街道,street,610113000000",)),
        [(188, "code '６１０１１３０９７０００' must be 12 digits")],
    ),
]


def bad_utf8_file() -> bytes:
    lines = [line.encode("utf-8") for line in bundled_lines()]
    lines[9] = "610114000000,阎良区,district,610100000000".encode("gbk")
    lines[29] = "610103006000,文艺路街道,street,610103000000".encode("gbk")
    return b"\n".join(lines) + b"\n"


def oversized_field_file() -> bytes:
    return with_lines({12: "610117000000," + "高" * 200_000 + ",district,610100000000"})


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        *[pytest.param(data, errors, id=name) for name, data, errors in BAD_FILES],
        pytest.param(
            bad_utf8_file(),
            [
                (10, "not UTF-8 text; save the file as UTF-8 and import again"),
                (30, "not UTF-8 text; save the file as UTF-8 and import again"),
            ],
            id="bad UTF-8",
        ),
        pytest.param(
            oversized_field_file(),
            [(12, "not a CSV row: field larger than field limit (131072)")],
            id="oversized field",
        ),
    ],
)
async def test_bad_file_is_rejected_whole(
    seeded: Database, data: bytes, errors: list[tuple[int, str]]
) -> None:
    # one good new station rides along: it must not be created either
    data += b"610113098000,\xe6\x96\xb0\xe8\xa1\x97,street,610113000000\n"
    before = await station_documents(seeded)
    with pytest.raises(StationFileError) as caught:
        await stations.import_stations(seeded, data)
    assert caught.value.errors == [LineError(line, text) for line, text in errors]
    assert str(caught.value) == "\n".join(f"line {n}: {t}" for n, t in errors)
    assert await station_documents(seeded) == before


async def test_bad_file_into_empty_database_writes_nothing(database: Database) -> None:
    data = with_lines({5: "610104000000,莲湖区,county,610100000000"})
    with pytest.raises(StationFileError):
        await stations.import_stations(database, data)
    assert await station_documents(database) == []


async def test_relevelling_a_parent_would_orphan_its_streets(
    seeded: Database,
) -> None:
    before = await station_documents(seeded)
    data = f"{HEADER}\n{YANTA},雁塔区,city,\n".encode()
    with pytest.raises(StationFileError) as caught:
        await stations.import_stations(seeded, data)
    assert [error.line for error in caught.value.errors] == [2]
    assert caught.value.errors[0].message == (
        f"10 existing stations below {YANTA} need it to stay a district"
    )
    assert await station_documents(seeded) == before


async def test_export_writes_the_same_columns_and_round_trips(
    seeded: Database, second_database: Database
) -> None:
    exported = stations.to_csv((await stations.load_all(seeded)).values())
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == list(stations.COLUMNS)
    assert len(rows) == 187
    assert exported == BUNDLED.decode("utf-8").replace("\r\n", "\n")

    result = await stations.import_stations(second_database, exported.encode())
    assert result == stations.ImportResult(created=186, updated=0, unchanged=0)
    assert await station_documents(second_database) == await station_documents(seeded)
