"""The blind audit on the review desk: an audit photo is shown without the model's answer,
anywhere, and takes its place among the flagged photos of the doubt-ordered queue."""

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from desk_support import (
    SECRET_KEY,
    csrf_of,
    decide,
    logged_in,
    prediction,
    queue_of,
    reviews_of,
)
from pydantic import SecretStr
from sqlalchemy import select
from sweep_support import Incoming, add_images, build_settings, local_sweep, postgres_database

from cli import main
from models import Prediction
from refund_sorter.config import Settings, get_settings
from refund_sorter.db import session_factory

pytestmark = [pytest.mark.services, pytest.mark.model]


@dataclass
class AuditNight:
    settings: Settings
    flagged: list[int]
    audits: list[int]


@pytest.fixture(scope="module")
def audit_night(tmp_path_factory, review_model, accounts) -> Iterator[AuditNight]:
    """One night at the median threshold (about half the photos flagged) that draws every
    confident photo for the audit."""
    with postgres_database() as url:
        settings = build_settings(
            tmp_path_factory.mktemp("audit") / "home",
            url,
            review_model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr(SECRET_KEY),
            audit_rate=1.0,
        )
        _half_flagged_night(settings, review_model, 16)
        with session_factory(url).begin() as session:
            rows = session.scalars(select(Prediction).order_by(Prediction.id)).all()
            flagged = [p.id for p in rows if p.needs_review]
            audits = [p.id for p in rows if p.audited]
            # Two audit photos with different answers, whatever this CPU made the random
            # model say: the second one's row takes another answer than the first one's.
            first, second = [p for p in rows if p.audited][:2]
            second.main_category, second.sub_category = next(
                c for c in CATEGORIES if c != (first.main_category, first.sub_category)
            )
            ids = {p.id for p in rows}
        assert len(flagged) >= 3 and len(audits) >= 3
        assert set(flagged) | set(audits) == ids
        yield AuditNight(settings, flagged, audits)


def _half_flagged_night(settings: Settings, model, n: int) -> None:
    """A night whose threshold is the median sub confidence of its photos."""
    from classifier.predict import Classifier
    from refund_sorter.images import open_rgb

    written = add_images(Incoming(settings.incoming_dir), n, seed=21, prefix="audit")
    clf = Classifier.from_path(model.path, "cpu", "auto", 1.0)
    tensors = [
        clf.preset(open_rgb((settings.incoming_dir / rel).read_bytes(), min_size=1))
        for rel in written
    ]
    confidences = sorted(x.sub_confidence for x in clf.predict_tensors(tensors))
    clf.review_threshold = (confidences[n // 2 - 1] + confidences[n // 2]) / 2
    # Unset, the setting leaves the classifier's own threshold in force.
    local_sweep(settings.model_copy(update={"review_threshold": None}), clf)


def blinded(html: str, photo: Prediction) -> str:
    """The page with what may differ between two photos taken out: the photo's id, file
    name and image, and the form token."""
    html = html.replace(photo.file_name, "NAME")
    html = re.sub(rf"(/review/|/photos/|photo-|data-photo=\"|after=){photo.id}\b", r"\1ID", html)
    return html.replace(csrf_of(html), "TOKEN")


def test_two_audit_photos_with_different_answers_render_the_same_page(audit_night):
    settings = audit_night.settings
    photos = [prediction(settings, p) for p in audit_night.audits]
    answers = {(p.main_category, p.sub_category): p for p in photos}
    assert len(answers) >= 2, "the audit photos need two different answers"
    a, b = list(answers.values())[:2]
    client = logged_in(settings, "ben")

    page_a, page_b = client.get(f"/review/{a.id}").text, client.get(f"/review/{b.id}").text

    assert blinded(page_a, a) == blinded(page_b, b)
    assert "The model says" not in page_a and "Confirm" not in page_a
    assert 'data-key="Enter"' not in page_a and "selected>" not in _decision_form(page_a)
    # The full list, grouped by main category, to choose from.
    options = re.findall(r'<option value="([^"]+)"', _decision_form(page_a))
    assert sorted(options) == [
        "bottoms/jeans",
        "bottoms/skirt",
        "tops/shirt",
        "tops/sweater",
        "tops/t-shirt",
    ]
    assert '<optgroup label="bottoms">' in page_a and '<optgroup label="tops">' in page_a


def _decision_form(html: str) -> str:
    form = html[html.index('class="other blind"') :]
    return form[: form.index("</form>")]


def test_a_decided_audit_stays_blind_in_the_latest_decisions(audit_night):
    settings = audit_night.settings
    client = logged_in(settings, "ben")
    audit = prediction(settings, audit_night.audits[-1])
    flagged = prediction(settings, audit_night.flagged[-1])
    decide(client, audit.id, "tops/shirt")
    decide(client, flagged.id, "tops/shirt")

    page = client.get("/review").text
    rows = re.findall(r"<tr>(.*?)</tr>", page[page.index("Latest decisions") :], re.S)
    cells = {
        tds[0]: tds[1] for tds in (re.findall(r"<td>(.*?)</td>", row, re.S) for row in rows) if tds
    }
    assert cells[audit.file_name] == "<em>audit: not shown</em>"
    assert cells[flagged.file_name] == f"{flagged.main_category} / {flagged.sub_category}"
    # Opened again from there to change it: still blind.
    again = client.get(f"/review/{audit.id}").text
    assert "The model says" not in again and "tops / shirt by ben" in again
    # Recorded as it was shown: the promotion gate counts blind labels apart.
    assert reviews_of(settings, audit.id)[-1].blind
    assert not reviews_of(settings, flagged.id)[-1].blind


def test_a_share_of_flagged_photos_is_shown_blind_as_audits_are(audit_night):
    settings = audit_night.settings.model_copy(update={"blind_flagged_share": 1.0})
    client = logged_in(settings, "anna")
    flagged = prediction(settings, audit_night.flagged[0])

    page = client.get(f"/review/{flagged.id}").text

    assert "The model says" not in page and "Confirm" not in page
    assert "A flagged photo drawn at random to be decided blind" in page
    assert "selected>" not in _decision_form(page)
    decide(client, flagged.id, "tops/sweater")
    assert reviews_of(settings, flagged.id)[-1].blind
    # Reached through a main-category filter, which names the model's answer: shown with it,
    # and its decision recorded as seen.
    filtered = client.get(f"/review/{flagged.id}?category={flagged.main_category}").text
    assert "Confirm" in filtered
    decide(client, flagged.id, "tops/sweater", category=flagged.main_category)
    assert not reviews_of(settings, flagged.id)[-1].blind
    # At the default share of 0 the same photo shows the model's answer again.
    seen = logged_in(audit_night.settings, "anna").get(f"/review/{flagged.id}").text
    assert "Confirm" in seen


def test_audits_come_among_the_flagged_photos_and_only_without_a_category_filter(audit_night):
    settings = audit_night.settings
    client = logged_in(settings, "ben")

    queue = queue_of(client)
    audits = [p for p in queue if p in audit_night.audits]
    flagged = [p for p in queue if p in audit_night.flagged]
    assert audits and flagged and len(queue) == len(set(queue))
    assert queue.index(audits[0]) < queue.index(flagged[-1])  # never all last
    margins = [prediction(settings, p).sub_margin for p in flagged]
    assert margins == sorted(margins)  # the flagged ones, most doubtful first
    assert queue_of(client) == queue  # the same order every time

    for category in ("tops", "bottoms", "tops/shirt"):
        assert not set(queue_of(client, category=category)) & set(audit_night.audits)
    page = client.get("/review").text
    left = len(queue)
    assert f"{left} left to review" in page
    assert re.search(
        rf": {left} of {len(audit_night.flagged) + len(audit_night.audits)} left", page
    )


def test_the_decided_audits_measure_the_night(audit_night, use_settings, monkeypatch):
    settings = audit_night.settings
    use_settings(settings)
    # A night of a few labels: the minimum of labels above a threshold lowered to judge it.
    monkeypatch.setenv("REFUND_SORTER_THRESHOLD_MIN_LABELLED", "1")
    get_settings.cache_clear()
    # ben: the earlier tests left him a claim on a photo, and one audit decided.
    client = logged_in(settings, "ben")
    before = _accuracy_json()
    (night,) = before["nights"]
    assert night["figures"]["provisional"]  # audits are left to decide

    # Every audit decided (again, where an earlier test did): the model's answer for every
    # other one, another sub else, in the order of the confidences stored in the rows, so
    # that what follows holds whichever photos this CPU's arithmetic put on top. The most
    # confident is answered wrong first: then no threshold reaches 99.9%, as the first
    # threshold that leaves any decided photo unflagged leaves that one.
    audits = sorted(
        (prediction(settings, p) for p in audit_night.audits),
        key=lambda p: (-p.sub_confidence, p.id),
    )
    answers = {p.id: p.sub_category if i % 2 else _other(p) for i, p in enumerate(audits)}
    for p in audits:
        decide(client, p.id, f"{p.main_category}/{answers[p.id]}")
    high = CliRunner().invoke(main, ["threshold", "--target", "0.999"], catch_exceptions=False)
    assert high.exit_code == 1 and "no threshold reaches 99.9%" in high.output

    # The most confident one decided again, now as the model said: every threshold leaves it
    # unflagged and right, and with it at least a fair share of the photos right.
    top = audits[0]
    answers[top.id] = top.sub_category
    decide(client, top.id, f"{top.main_category}/{top.sub_category}")
    right = sum(answers[p.id] == p.sub_category for p in audits)

    after = _accuracy_json()
    figures = after["nights"][0]["figures"]
    assert not figures["provisional"]
    counts = figures["counts"]
    assert counts["audits"] == counts["audits_decided"] == len(audit_night.audits)
    assert counts["flagged"] == len(audit_night.flagged)
    assert counts["audits_right_sub"] == right
    sub = figures["unflagged_sub"]
    assert sub["value"] == pytest.approx(right / len(audit_night.audits))
    assert sub["method"] == "clopper-pearson" and sub["n"] == len(audit_night.audits)
    assert sub["low"] <= sub["value"] <= sub["high"]
    assert figures["unflagged_main"]["value"] == 1.0  # every answer kept the main category
    assert after["window"]["counts"] == counts

    text = CliRunner().invoke(main, ["accuracy"], catch_exceptions=False).output
    assert f"{len(audit_night.audits)} drawn for audit ({len(audit_night.audits)} decided)" in text
    page = client.get("/accuracy")
    assert page.status_code == 200
    assert f"{100 * right / len(audit_night.audits):.1f}% [" in page.text

    # 1% is reached from the lowest threshold on, which flags nothing.
    low = CliRunner().invoke(main, ["threshold", "--target", "0.01"], catch_exceptions=False)
    assert low.exit_code == 0, low.output
    assert "suggested threshold 0.00: flags 0.0% of the photos" in low.output
    assert "rests on " in low.output and " labelled photos above it" in low.output
    assert "threshold stored in the model (chosen offline)" in low.output
    assert "in force 1.00, REFUND_SORTER_REVIEW_THRESHOLD, which overrides it" in low.output
    assert "apply it with: refund-sorter threshold --set 0.00" in low.output


def _other(photo: Prediction) -> str:
    """A sub category of the photo's main category other than the model's."""
    return next(s for m, s in CATEGORIES if m == photo.main_category and s != photo.sub_category)


CATEGORIES = [
    ("bottoms", "jeans"),
    ("bottoms", "skirt"),
    ("tops", "shirt"),
    ("tops", "sweater"),
    ("tops", "t-shirt"),
]


def _accuracy_json() -> dict:
    result = CliRunner().invoke(main, ["accuracy", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_audits_keep_coming_at_their_share_while_two_reviewers_decide_one_by_one():
    """A night of 250 photos, 139 flagged and 61 drawn for the audit, decided one photo at a
    time by two reviewers taking turns through the functions the desk uses (the next photo,
    its claim, the decision): the audits come at about their share of the photos to decide
    from the first decisions on, not after the last flagged one. The places are fixed by the
    row ids of a new database and the seeded night, so the bounds cannot fail by chance."""
    from datetime import UTC, datetime, timedelta

    from nights_support import Photo, stage_night

    from refund_sorter import crud
    from review import queue

    rng = random.Random(24)
    photos = [Photo("tops", "shirt", flagged=True, margin=rng.uniform(0, 0.3)) for _ in range(139)]
    photos += [Photo("tops", "shirt", audited=True, margin=rng.uniform(0.5, 1)) for _ in range(61)]
    photos += [Photo("tops", "shirt", margin=rng.uniform(0.5, 1)) for _ in range(50)]
    rng.shuffle(photos)
    share = 61 / 200
    with postgres_database() as url:
        sessions = session_factory(url)
        with sessions.begin() as session:
            stage_night(session, datetime.now(UTC) - timedelta(hours=8), photos=photos)
        held: dict[str, int | None] = {"anna": None, "ben": None}
        shown: list[Prediction] = []  # in the order the desk offered them
        for turn in range(80 + 1):
            reviewer = ("anna", "ben")[turn % 2]
            with sessions.begin() as session:
                if held[reviewer] is not None:
                    crud.record_review(
                        session,
                        prediction_id=held[reviewer],
                        reviewer=reviewer,
                        main_category="tops",
                        sub_category="shirt",
                        blind=next(p.audited for p in shown if p.id == held[reviewer]),
                    )
                    crud.release_claims(session, reviewer=reviewer)
                now = datetime.now(UTC)
                photo = queue.next_photo(session, queue.Selection(), reviewer=reviewer, now=now)
                assert photo is not None and photo.id not in {p.id for p in shown}
                assert crud.claim_photo(
                    session, prediction_id=photo.id, reviewer=reviewer, seconds=300
                )
                held[reviewer] = photo.id
                session.expunge(photo)
                shown.append(photo)

    audited = [p.audited for p in shown[:80]]
    # About their share of every stretch of 20 (6 expected), and never a stretch without.
    for start in range(0, 80, 20):
        assert 2 <= sum(audited[start : start + 20]) <= 11, (start, audited)
    assert 0.6 * share * 80 <= sum(audited) <= 1.4 * share * 80
    # The flagged ones still come most doubtful first.
    margins = [p.sub_margin for p in shown if not p.audited]
    assert margins == sorted(margins)
