"""The Nights pages in a real browser: ``refund-sorter review-server`` started as an
operator starts it, against PostgreSQL holding a staged month of nights (thirty, one of them
abandoned, a skipped run, a night a photo station's new format failed, a last night whose
mix moved to shoes); headless Chromium logs in and sees both pages with every plot loaded,
and a browser that has not logged in gets the login page instead, plots included.

``SCREENSHOT_NIGHTS_TO=docs/review-nights.png SCREENSHOT_NIGHT_TO=docs/review-night.png
pytest tests/review/test_nights_browser.py`` also saves the pages as docs/review-desk.md
shows them.
"""

import os
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from browser import Browser
from desk_support import PASSWORDS, review_server
from nights_support import stage_month
from pydantic import SecretStr
from sweep_support import REPO_ROOT, TinyModel, build_settings, postgres_database

from models import utcnow
from refund_sorter.db import session_factory
from review import plots

pytestmark = [pytest.mark.services, pytest.mark.browser]
SHIPPED_MODEL = REPO_ROOT / "assets/model/refund-sorter-resnet18.pt"
# Every image of the page has arrived and was decoded: an SVG refused or broken has no width.
IMAGES_SHOWN = (
    "(() => { const all = [...document.images]; return all.length > 0 && "
    "all.every(i => i.complete && i.naturalWidth > 0) && all.length; })()"
)


@pytest.fixture(scope="module")
def month(tmp_path_factory, accounts):
    from registry.version import model_version

    version = model_version(SHIPPED_MODEL)
    model = TinyModel(SHIPPED_MODEL, version, None, 0.6)
    with postgres_database() as url:
        settings = build_settings(
            tmp_path_factory.mktemp("nights-browser") / "home",
            url,
            model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr("0c6f2a9e4b8d1f3a5c7e9b2d4f6a8c1e"),
            timezone="Europe/Berlin",
        )
        # The nights start at 02:00 in Berlin, as beat starts them; the last one at least an
        # hour ago, so that it has finished.
        berlin = ZoneInfo("Europe/Berlin")
        day = (utcnow() - timedelta(hours=3)).astimezone(berlin).date()
        last_started = datetime.combine(day, time(2, 0), tzinfo=berlin).astimezone(UTC)
        with session_factory(url).begin() as session:
            sweeps = stage_month(session, last_started, version)
        log = tmp_path_factory.mktemp("server") / "review-server.log"
        with review_server(settings, log) as server:
            yield server, sweeps


def log_in(b: Browser, server: str, name: str = "anna") -> None:
    b.open(f"{server}/login")
    b.type("input[name=name]", name)
    b.type("input[name=password]", PASSWORDS[name])
    with b.next_page():
        b.click("form.login button[type=submit]")


def test_a_reviewer_sees_both_nights_pages_with_their_plots(month, browser):
    server, sweeps = month
    b = browser
    log_in(b, server)
    with b.next_page():
        b.click("a[href='/nights']")  # the header's link
    assert b.url() == f"{server}/nights"
    assert b.wait_for(IMAGES_SHOWN) == len(plots.TRENDS)
    headline = b.js("document.querySelector('#headline').innerText")
    assert headline.startswith("Last night (")
    assert "drift over threshold" in headline and "category mix drifted" in headline
    assert b.js("getComputedStyle(document.querySelector('#headline')).borderLeftColor") == (
        "rgb(180, 35, 24)"  # --bad: the warning is red, from the desk's own stylesheet
    )
    rows = b.js(
        "[...document.querySelectorAll('#nights-table tbody tr')].map(r => r.dataset.sweep)"
    )
    assert len(rows) == 30 and rows[0] == str(sweeps["last"])
    assert str(sweeps["skipped"]) not in rows
    assert b.js(
        f"document.querySelector('tr[data-sweep=\"{sweeps['abandoned']}\"]').className"
    ) == ("abandoned")
    if target := os.environ.get("SCREENSHOT_NIGHTS_TO"):
        b.screenshot(REPO_ROOT / target)

    with b.next_page():
        b.click("#headline a")  # to the last night
    assert b.url() == f"{server}/nights/{sweeps['last']}"
    assert b.wait_for(IMAGES_SHOWN) == len(plots.NIGHT_PLOTS)
    assert "Category mix against the baseline" in b.text()
    assert b.js("document.querySelector('#drift').innerText").count("drifted") >= 1
    if target := os.environ.get("SCREENSHOT_NIGHT_TO"):
        b.screenshot(REPO_ROOT / target)

    b.open(f"{server}/nights/{sweeps['station']}")
    assert b.wait_for(IMAGES_SHOWN) == len(plots.NIGHT_PLOTS)
    failures = b.js("document.querySelector('#failures tbody tr').innerText").split("\t")
    assert failures[0] == "not an image (unrecognised content)"
    assert "above the warning level" in b.js("document.querySelector('#headline').innerText")


def test_the_nights_pages_and_plots_refuse_anyone_not_logged_in(month, browser):
    server, sweeps = month
    b = browser
    for path in (
        "/nights",
        f"/nights/{sweeps['last']}",
        "/nights/plots/drift.svg",
        f"/nights/{sweeps['last']}/plots/mix-main.svg",
    ):
        b.open(f"{server}{path}")
        assert b.url().startswith(f"{server}/login?next=%2Fnights"), path
        assert b.js("document.querySelector('form.login') !== null"), path
        assert b.js("document.querySelector('svg') === null"), path
    log_in(b, server, "ben")
    b.open(f"{server}/nights")
    assert b.wait_for(IMAGES_SHOWN) == len(plots.TRENDS)
    with b.next_page():
        b.click("button.link")  # log out
    b.open(f"{server}/nights")
    assert "/login?next=%2Fnights" in b.url()
