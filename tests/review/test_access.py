"""Who gets in, and what the desk serves: a login for everything, the form token on every
post, and photo files only from inside the folders the sweep files them in."""

import os
from pathlib import Path

import pytest
from desk_support import csrf_of, desk_client, logged_in, reviews_of
from sqlalchemy import update

from models import Prediction
from refund_sorter.db import session_factory

pytestmark = [pytest.mark.services, pytest.mark.model]


def test_every_page_but_the_login_needs_a_reviewer(nights):
    client = desk_client(nights.settings)
    photo = nights.flagged[nights.last][0]

    for path in ("/review", f"/review/{photo}", f"/photos/{photo}", "/review?sweep=1"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
    page = client.get("/login")
    refused = client.post(
        f"/review/{photo}", data={"decision": "tops/shirt", "csrf": csrf_of(page.text)}
    )
    assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
    assert reviews_of(nights.settings, photo) == []
    assert client.get("/healthz").text == "ok"


def test_a_wrong_password_or_an_unknown_name_gets_no_session(nights):
    client = desk_client(nights.settings)
    for name, password in (("anna", "ben's longer password"), ("carol", "anna's long password")):
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"name": name, "password": password, "csrf": token})
        assert response.status_code == 401
        assert "Wrong name or password." in response.text
        assert client.get("/review").status_code == 303  # still not logged in


def test_a_login_goes_back_to_the_page_asked_for_but_never_off_site(nights):
    for asked, then in (
        ("//evil.example/phish", "/review"),
        ("https://evil.example/", "/review"),
        (f"/review?sweep={nights.first}", f"/review?sweep={nights.first}"),
    ):
        client = desk_client(nights.settings)
        token = csrf_of(client.get("/login").text)
        form = {"name": "anna", "password": "anna's long password", "csrf": token}
        response = client.post("/login", data={**form, "next": asked})
        assert response.headers["location"] == then


def test_posts_without_the_sessions_form_token_are_refused(nights):
    stranger = desk_client(nights.settings)
    foreign_token = csrf_of(stranger.get("/login").text)
    client = desk_client(nights.settings)
    client.get("/login")
    form = {"name": "anna", "password": "anna's long password"}

    for token in (None, "", foreign_token):
        data = form if token is None else {**form, "csrf": token}
        response = client.post("/login", data=data)
        assert response.status_code == 403
        assert "reload the page and try again" in response.text
    assert client.get("/review").status_code == 303

    client = logged_in(nights.settings)
    photo = nights.flagged[nights.last][0]
    for token in (None, foreign_token):
        data = {"decision": "tops/shirt", **({"csrf": token} if token else {})}
        assert client.post(f"/review/{photo}", data=data).status_code == 403
        assert client.post("/logout", data=data).status_code == 403
    assert reviews_of(nights.settings, photo) == []
    assert client.get("/review").status_code == 200  # still logged in


def test_logging_out_ends_the_session(nights):
    client = logged_in(nights.settings)
    token = csrf_of(client.get("/review").text)
    assert client.post("/logout", data={"csrf": token}).headers["location"] == "/login"
    assert client.get("/review").status_code == 303


def test_the_photo_is_served_from_where_its_row_says(nights):
    client = logged_in(nights.settings)
    photo = nights.flagged[nights.first][0]
    with session_factory(nights.settings.database_url)() as session:
        row = session.get(Prediction, photo)

    response = client.get(f"/photos/{photo}")

    assert response.status_code == 200
    assert response.content == Path(row.final_path).read_bytes()
    expected = "image/jpeg" if row.final_path.endswith(".jpg") else "image/png"
    assert response.headers["content-type"] == expected
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_path_outside_the_sweeps_folders_is_never_served(nights, tmp_path):
    """Rows are trusted no further than the folders: a path elsewhere (written by hand, say)
    or a link out of processed/ gets a 404, as does a photo that does not exist."""
    client = logged_in(nights.settings)
    photo = nights.flagged[nights.first][1]
    processed = nights.settings.processed_dir
    secret = tmp_path / "not-a-photo.jpg"
    secret.write_bytes(b"private")
    link = processed / "link-out.jpg"
    os.symlink(secret, link)
    sessions = session_factory(nights.settings.database_url)
    with sessions() as session:
        original = session.get(Prediction, photo).final_path
    try:
        for path in (
            str(secret),
            str(link),
            str(processed / ".." / ".." / secret.relative_to(tmp_path.parent.parent)),
            "/etc/passwd",
            str(processed),
        ):
            with sessions.begin() as session:
                session.execute(
                    update(Prediction).where(Prediction.id == photo).values(final_path=path)
                )
            response = client.get(f"/photos/{photo}")
            assert response.status_code == 404, path
            assert b"private" not in response.content
    finally:
        link.unlink()
        with sessions.begin() as session:
            session.execute(
                update(Prediction).where(Prediction.id == photo).values(final_path=original)
            )
    assert client.get("/photos/999999").status_code == 404
    assert client.get("/photos/not-a-number").status_code == 400
