"""Using the review desk through FastAPI's TestClient as a browser would: read the form
token from the page, post forms, follow nothing unasked; and the desk served by
``refund-sorter review-server`` as its own process, for a real browser."""

import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sweep_support import ServiceProcess, free_port, service_env

from models import Prediction, Review
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from review.app import create_app

SECRET_KEY = "a4f0c1e9d2b8476aa1e3c5d7f9b0e2c4"
PASSWORDS = {"anna": "anna's long password", "ben": "ben's longer password"}


def desk_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), follow_redirects=False)


def csrf_of(html: str) -> str:
    tokens = set(re.findall(r'name="csrf" value="([^"]+)"', html))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def logged_in(settings: Settings, name: str = "anna") -> TestClient:
    client = desk_client(settings)
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"name": name, "password": PASSWORDS[name], "csrf": csrf_of(page.text)},
    )
    assert response.status_code == 303, response.text
    return client


def shown_photo(html: str) -> int | None:
    """The id of the photo the page offers for a decision, if any."""
    found = re.search(r'data-photo="(\d+)"', html)
    return int(found[1]) if found else None


def queue_of(client: TestClient, **filters) -> list[int]:
    """Every photo a selection offers, in order, by skipping through it to the end."""
    seen: list[int] = []
    photo = shown_photo(client.get("/review", params=filters).text)
    while photo is not None and photo not in seen:
        seen.append(photo)
        photo = shown_photo(client.get("/review", params={**filters, "after": photo}).text)
    return seen


def decide(client: TestClient, photo: int, decision: str, **filters) -> None:
    page = client.get(f"/review/{photo}")
    response = client.post(
        f"/review/{photo}", data={"decision": decision, "csrf": csrf_of(page.text), **filters}
    )
    assert response.status_code == 303, response.text


def reviews_of(settings: Settings, photo: int) -> list[Review]:
    with session_factory(settings.database_url)() as session:
        return list(
            session.scalars(select(Review).where(Review.prediction_id == photo).order_by(Review.id))
        )


def prediction(settings: Settings, photo: int) -> Prediction:
    with session_factory(settings.database_url)() as session:
        return session.get(Prediction, photo)


@contextmanager
def review_server(settings: Settings, log: Path) -> Iterator[str]:
    """``refund-sorter review-server`` on a free port, as an operator starts it: its URL,
    once it answers."""
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "refund-sorter"),
        "review-server",
        "--port",
        str(port),
    ]
    process = ServiceProcess("review-server", argv, service_env(settings), log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    assert response.read() == b"ok"
                break
            except OSError:
                if process.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(process.describe()) from None
                time.sleep(0.3)
        yield url
    finally:
        process.stop()
