from commons.db import Database
from tests.helpers import create_account, login


async def test_admin_sees_the_whole_network(client, seeded: Database) -> None:
    await create_account(seeded, "admin1", "admin", "610100000000")
    await login(client, "admin1")
    response = await client.get("/api/v1/stations", params={"limit": "500"})
    body = await response.json()
    assert response.status == 200
    assert body["total"] == 186
