"""The returns counter's API without a server: what it answers when the database is away, a
token is missing, or a route does not exist, always JSON with a plain reason."""

from fastapi.testclient import TestClient

from api.app import create_app
from refund_sorter.config import Settings

# Nothing listens on port 1: every database call fails at once.
AWAY = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def client(tmp_path) -> TestClient:
    settings = Settings(home=tmp_path, database_url=AWAY, broker_url="redis://127.0.0.1:1/0")
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_without_a_token_no_database_is_asked(tmp_path):
    answer = client(tmp_path).post("/v1/classify", content=b"x")
    assert answer.status_code == 401
    assert answer.json() == {"detail": "no API token: send Authorization: Bearer TOKEN"}
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_database_away_is_503_with_a_plain_reason(tmp_path):
    token = {"Authorization": "Bearer rs_" + "a" * 43}
    answer = client(tmp_path).post("/v1/classify", content=b"x", headers=token)
    assert answer.status_code == 503
    assert answer.json() == {"detail": "the database does not answer; try again shortly"}
    # A token that cannot be ours is refused without asking it.
    assert (
        client(tmp_path).get("/v1/predictions/1", headers={"Authorization": "Bearer x"}).status_code
        == 401
    )


def test_health_readiness_and_unknown_routes(tmp_path):
    api = client(tmp_path)
    assert api.get("/healthz").text == "ok"
    ready = api.get("/readyz")
    assert ready.status_code == 503 and set(ready.json()["problems"]) == {"database"}
    assert api.get("/nowhere").json() == {"detail": "Not Found"}
    # The token first: nobody learns what the API takes without one.
    answer = api.get("/v1/predictions/x", headers={"Authorization": "Bearer x"})
    assert answer.json() == {"detail": "no valid API token"}
