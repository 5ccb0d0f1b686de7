"""The review desk in a real browser, end to end: ``refund-sorter review-server`` started as
an operator starts it, against PostgreSQL holding a real night (the shipped model on the
sample photos); headless Chromium logs in, confirms one photo with a click, corrects the
next with a key press, and the table and the CSV say so; then a second reviewer enlarges a
photo, decides it, undoes that with its key and opens the progress page; last, a night
drawn whole for the audit, and an audit photo decided blind.

``SCREENSHOT_TO=docs/review-desk.png SCREENSHOT_PROGRESS_TO=docs/review-progress.png
SCREENSHOT_AUDIT_TO=docs/review-audit.png pytest tests/review/test_browser.py`` also saves
the pages as docs/review-desk.md shows them.
"""

import csv
import os
import re
from pathlib import Path

import pytest
from browser import Browser
from click.testing import CliRunner
from desk_support import PASSWORDS, prediction, review_server, reviews_of
from pydantic import SecretStr
from sweep_support import (
    REPO_ROOT,
    Incoming,
    TinyModel,
    build_settings,
    local_sweep,
    postgres_database,
)

from cli import main
from refund_sorter.images import sha256_bytes

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.model]
SHIPPED_MODEL = REPO_ROOT / "assets/model/refund-sorter-resnet18.pt"
SAMPLES = REPO_ROOT / "assets/samples"


@pytest.fixture(scope="module")
def night(tmp_path_factory, accounts):
    """One local sweep of the sample photos by the shipped model; below 0.9 is flagged."""
    from classifier.predict import Classifier
    from registry.version import model_version

    model = TinyModel(SHIPPED_MODEL, model_version(SHIPPED_MODEL), None, 0.9)
    with postgres_database() as url:
        settings = build_settings(
            tmp_path_factory.mktemp("browser") / "home",
            url,
            model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr("5e1d9c3b7a2f4e6d8c0b1a3f5e7d9c2b"),
            audit_rate=0.0,  # the audit has a night of its own, below
        )
        incoming = Incoming(settings.incoming_dir)
        for sample in sorted(SAMPLES.glob("*.jpg")):
            if sample.name != "damaged-upload.jpg":
                (incoming.root / sample.name).write_bytes(sample.read_bytes())
        clf = Classifier.from_path(SHIPPED_MODEL, "cpu", "auto", settings.review_threshold)
        run = local_sweep(settings, clf)
        assert run.succeeded == 20
        yield settings


@pytest.fixture(scope="module")
def server(night, tmp_path_factory):
    """``refund-sorter review-server`` on a free port, as its own process."""
    with review_server(night, tmp_path_factory.mktemp("server") / "review-server.log") as url:
        yield url


def photo_on_page(b: Browser) -> int:
    return int(
        b.wait_for(
            "document.querySelector('.desk') && document.querySelector('.desk').dataset.photo"
        )
    )


def test_a_reviewer_confirms_one_photo_and_corrects_another(
    night, server, browser, use_settings, tmp_path
):
    b = browser
    b.open(f"{server}/review")
    assert "/login?next=" in b.url()
    b.type("input[name=name]", "anna")
    b.type("input[name=password]", PASSWORDS["anna"])
    with b.next_page():
        b.click("form.login button[type=submit]")

    first = photo_on_page(b)
    assert b.url() == f"{server}/review"
    # The photo itself reached the browser, through the desk's own content policy.
    shown = "(img => img.complete && img.naturalWidth)(document.querySelector('.photo img'))"
    assert b.wait_for(shown) > 0
    predicted = prediction(night, first)
    assert f"Confirm {predicted.main_category} / {predicted.sub_category}" in b.text()
    with b.next_page():
        b.click("button.confirm")  # the mouse

    second = photo_on_page(b)
    assert second != first
    assert f"Saved {predicted.main_category} / {predicted.sub_category}" in b.text()
    wrong = prediction(night, second)
    correction = wrong.top_subs[1]
    with b.next_page():
        b.press("2")  # the key for the next best guess

    third = photo_on_page(b)
    assert third not in (first, second)
    assert f"Saved {correction['main']} / {correction['sub']} for {wrong.file_name}" in b.text()
    if target := os.environ.get("SCREENSHOT_TO"):
        b.screenshot(REPO_ROOT / target)

    (confirmed,) = reviews_of(night, first)
    assert (confirmed.reviewer, confirmed.main_category, confirmed.sub_category) == (
        "anna",
        predicted.main_category,
        predicted.sub_category,
    )
    (corrected,) = reviews_of(night, second)
    assert (corrected.reviewer, corrected.main_category, corrected.sub_category) == (
        "anna",
        correction["main"],
        correction["sub"],
    )
    assert reviews_of(night, third) == []

    use_settings(night)
    out = tmp_path / "returns.csv"
    assert CliRunner().invoke(main, ["export", "--out", str(out)]).exit_code == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {row["content_hash"]: row for row in csv.DictReader(fh)}
    for photo, review in ((first, confirmed), (second, corrected)):
        row = rows[prediction(night, photo).content_hash]
        assert row["reviewed_main_category"] == review.main_category
        assert row["reviewed_sub_category"] == review.sub_category
        assert row["reviewed_by"] == "anna"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["reviewed_at"])
    untouched = rows[prediction(night, third).content_hash]
    assert untouched["reviewed_by"] == "" and untouched["needs_review"] == "true"
    assert sha256_bytes(Path(prediction(night, first).final_path).read_bytes()) == (
        prediction(night, first).content_hash
    )


def test_a_decision_undone_with_its_key_the_zoom_and_the_progress_page(night, server, browser):
    b = browser
    b.open(f"{server}/login")
    b.type("input[name=name]", "ben")
    b.type("input[name=password]", PASSWORDS["ben"])
    with b.next_page():
        b.click("form.login button[type=submit]")
    photo = photo_on_page(b)

    zoomed = "document.querySelector('.photo').classList.contains('zoomed')"
    b.press("z")  # enlarges, and shrinks again
    assert b.wait_for(zoomed)
    b.press("z")
    assert not b.js(zoomed)
    b.press("z")
    assert b.wait_for(zoomed)
    escape = {"key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27}
    b.send("Input.dispatchKeyEvent", type="keyDown", **escape)  # so does Escape
    b.send("Input.dispatchKeyEvent", type="keyUp", **escape)
    assert not b.js(zoomed)
    b.click(".photo img")  # the mouse enlarges it too
    assert b.wait_for(zoomed)
    b.click(".photo img")
    assert not b.js(zoomed)

    with b.next_page():
        b.press("Enter")  # confirms
    assert photo_on_page(b) != photo
    (decided,) = reviews_of(night, photo)
    assert decided.reviewer == "ben" and decided.undone_at is None
    with b.next_page():
        b.press("u")  # takes it back: the photo is shown again, to decide anew
    assert photo_on_page(b) == photo
    assert "Undone:" in b.text() and b.url().startswith(f"{server}/review/{photo}")
    (undone,) = reviews_of(night, photo)
    assert undone.undone_at is not None

    with b.next_page():
        b.click("a[href='/progress']")
    assert b.url() == f"{server}/progress"
    table = b.wait_for(
        "document.querySelector('#reviewers') && document.querySelector('#reviewers').innerText"
    )
    lines = {line.split("\t")[0]: line.split("\t")[1:] for line in table.splitlines()[1:]}
    assert lines["anna"][:2] == ["2", "50% (1)"]  # the first test confirmed one, corrected one
    assert "ben" not in lines  # his only decision was undone
    assert "Oldest undecided photo" in b.text()
    if target := os.environ.get("SCREENSHOT_PROGRESS_TO"):
        b.screenshot(REPO_ROOT / target)


def test_an_audit_photo_is_decided_blind(night, server, browser):
    from PIL import Image

    from classifier.predict import Classifier

    # A second night, every photo confident and drawn for the audit: three samples mirrored,
    # so that they are new photos to the model.
    incoming = Incoming(night.incoming_dir)
    samples = sorted(p for p in SAMPLES.glob("*.jpg") if p.name != "damaged-upload.jpg")
    for sample in samples[:3]:
        with Image.open(sample) as image:
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
                incoming.root / f"mirrored-{sample.name}"
            )
    audit_night = night.model_copy(update={"audit_rate": 1.0, "review_threshold": 0.0})
    run = local_sweep(audit_night, Classifier.from_path(SHIPPED_MODEL, "cpu", "auto", 0.0))
    assert run.succeeded == 3

    b = browser
    b.open(f"{server}/login")
    b.type("input[name=name]", "anna")
    b.type("input[name=password]", PASSWORDS["anna"])
    with b.next_page():
        b.click("form.login button[type=submit]")
    b.open(f"{server}/review?sweep={run.id}")
    photo = photo_on_page(b)
    row = prediction(night, photo)
    assert row.audited and not row.needs_review
    text = b.text()
    assert "drawn at random for the audit" in text
    assert "The model says" not in text and "Confirm" not in text
    html = b.js("document.documentElement.outerHTML")
    assert f"{100 * row.sub_confidence:.0f}%" not in html
    assert b.js("document.querySelector('form.blind select').value") == ""  # nothing chosen
    if target := os.environ.get("SCREENSHOT_AUDIT_TO"):
        b.screenshot(REPO_ROOT / target)

    choice = b.js("document.querySelector('form.blind select').options[2].value")
    b.js(f"document.querySelector('form.blind select').value = {choice!r}")
    with b.next_page():
        b.click("form.blind button[type=submit]")
    (decided,) = reviews_of(night, photo)
    main, sub = choice.split("/")
    assert (decided.reviewer, decided.main_category, decided.sub_category) == ("anna", main, sub)
    assert f"Saved {main} / {sub}" in b.text()
