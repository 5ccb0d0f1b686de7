"""Guessing a password is slow: after five failed logins in a row an account name (known or
not) is refused with 429 and Retry-After for a time that doubles with each further failure;
a client address has a wider allowance; the counts live in the database, so every desk
process sees them; behind a proxy its X-Forwarded-For is believed only when told to."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from desk_support import PASSWORDS, csrf_of, desk_client
from sqlalchemy import delete, select, update

from models import LoginFailures
from refund_sorter.db import session_factory

pytestmark = [pytest.mark.services, pytest.mark.model]


@pytest.fixture(autouse=True)
def no_failures(nights):
    with session_factory(nights.settings.database_url).begin() as session:
        session.execute(delete(LoginFailures))


def attempt(client, name: str, password: str, **headers):
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login", data={"name": name, "password": password, "csrf": token}, headers=headers
    )


def failures(settings) -> dict[str, tuple[int, bool]]:
    """Each key's failures in a row and whether it is locked now."""
    now = datetime.now(UTC)
    with session_factory(settings.database_url)() as session:
        rows = session.execute(
            select(LoginFailures.key, LoginFailures.failures, LoginFailures.locked_until)
        )
        return {key: (n, until is not None and until > now) for key, n, until in rows}


def lock_ends(settings, key: str) -> None:
    """The lock on ``key`` ended a second ago (instead of waiting for it)."""
    with session_factory(settings.database_url).begin() as session:
        session.execute(
            update(LoginFailures)
            .where(LoginFailures.key == key)
            .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_the_sixth_wrong_password_is_refused_and_the_right_one_then_waits(nights, caplog):
    client = desk_client(nights.settings)
    for _ in range(5):
        assert attempt(client, "anna", "guess").status_code == 401

    with caplog.at_level(logging.WARNING, logger="review.app"):
        refused = attempt(client, "anna", "guess")
        right = attempt(client, "anna", PASSWORDS["anna"])

    for response in (refused, right):
        assert response.status_code == 429
        assert 55 <= int(response.headers["retry-after"]) <= 60
        assert "Too many failed logins for this name or from this address" in response.text
        assert "Try again in 1 minute." in response.text
    assert client.get("/review").status_code == 303  # the right password did not get in
    refusals = [r for r in caplog.records if "refused a login" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)
    assert "'anna' from testclient" in refusals[0].getMessage()
    assert failures(nights.settings)["account:anna"] == (5, True)  # refusals are not counted

    # Once the lock ends, one more wrong password locks it for twice as long, then four times.
    for seconds in (120, 240):
        lock_ends(nights.settings, "account:anna")
        assert attempt(client, "anna", "guess").status_code == 401
        retry = int(attempt(client, "anna", PASSWORDS["anna"]).headers["retry-after"])
        assert seconds - 5 <= retry <= seconds

    # A success resets the account: five more failures before the next lock.
    lock_ends(nights.settings, "account:anna")
    assert attempt(client, "anna", PASSWORDS["anna"]).status_code == 303
    assert "account:anna" not in failures(nights.settings)
    client = desk_client(nights.settings)
    for _ in range(5):
        assert attempt(client, "anna", "guess").status_code == 401
    assert attempt(client, "anna", "guess").status_code == 429


def test_an_unknown_name_is_counted_and_refused_like_a_known_one(nights):
    answers = {}
    for name in ("ben", "nobody-here"):
        client = desk_client(nights.settings)
        texts = [attempt(client, name, "guess") for _ in range(6)]
        assert [r.status_code for r in texts] == [401] * 5 + [429]
        answers[name] = (texts[-1].headers["retry-after"], texts[-1].text.replace(name, "NAME"))
    (retry_ben, page_ben), (retry_nobody, page_nobody) = answers.values()
    assert abs(int(retry_ben) - int(retry_nobody)) <= 2
    strip = lambda page: page.split('name="csrf" value="')[0]  # noqa: E731 - tokens differ
    assert strip(page_ben) == strip(page_nobody)


def test_the_count_is_shared_by_every_desk_process(nights):
    one, other = desk_client(nights.settings), desk_client(nights.settings)  # two apps
    for client in (one, other, one, other, one):
        assert attempt(client, "ben", "guess").status_code == 401
    assert attempt(other, "ben", PASSWORDS["ben"]).status_code == 429


def test_an_address_has_a_wider_allowance_and_a_proxys_header_counts_only_when_trusted(nights):
    behind = nights.settings.model_copy(update={"review_trust_proxy": True})
    client = desk_client(behind)
    office = {"X-Forwarded-For": "203.0.113.7"}
    # 50 failures from one address, four per name: no name is locked, the address is.
    for i in range(50):
        assert attempt(client, f"temp{i // 4}", "guess", **office).status_code == 401, i
    assert failures(behind)["address:203.0.113.7"] == (50, True)
    assert attempt(client, "ben", PASSWORDS["ben"], **office).status_code == 429
    # The client cannot step round it by adding entries: the right-most is the proxy's.
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert attempt(client, "ben", PASSWORDS["ben"], **spoofed).status_code == 429
    # Another address (another office) is not held up.
    elsewhere = {"X-Forwarded-For": "203.0.113.8"}
    assert attempt(client, "ben", PASSWORDS["ben"], **elsewhere).status_code == 303

    # Without REFUND_SORTER_REVIEW_TRUST_PROXY the header is the client's word, and ignored.
    direct = desk_client(nights.settings)
    assert attempt(direct, "ben", PASSWORDS["ben"], **office).status_code == 303
    assert attempt(direct, "carol", "guess", **office).status_code == 401
    counted = failures(nights.settings)
    assert counted["address:testclient"] == (1, False)
    assert counted["address:203.0.113.7"] == (50, True)
