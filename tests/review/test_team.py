"""The review desk shared by a team: a photo shown to one reviewer is held for them (and
handed out again once the claim runs out), a decision can be undone with its history kept,
and the progress page says how far everyone got today."""

import csv
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from desk_support import csrf_of, decide, logged_in, prediction, reviews_of, shown_photo
from sqlalchemy import delete, select, update

from cli import main
from models import Review, ReviewClaim
from refund_sorter import crud
from refund_sorter.db import session_factory
from review.progress import day_bounds

pytestmark = [pytest.mark.services, pytest.mark.model]


def claims(settings) -> dict[int, str]:
    with session_factory(settings.database_url)() as session:
        rows = session.execute(select(ReviewClaim.prediction_id, ReviewClaim.reviewer))
        return {photo: reviewer for photo, reviewer in rows}


def expire_claim(settings, photo: int) -> None:
    """The claim on ``photo`` ran out a second ago (rather than waiting minutes for it)."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    with session_factory(settings.database_url).begin() as session:
        session.execute(
            update(ReviewClaim).where(ReviewClaim.prediction_id == photo).values(expires_at=past)
        )


@pytest.fixture(autouse=True)
def no_claims(nights):
    """Each test starts with nobody holding a photo."""
    with session_factory(nights.settings.database_url).begin() as session:
        session.execute(delete(ReviewClaim))


def test_two_reviewers_are_never_shown_the_same_photo_while_its_claim_lives(nights):
    clients = {"anna": logged_in(nights.settings, "anna"), "ben": logged_in(nights.settings, "ben")}
    shown: dict[str, int | None] = dict.fromkeys(clients)
    seen: dict[str, set[int]] = {name: set() for name in clients}

    for _ in range(20):
        for name, client in clients.items():
            params = {"after": shown[name]} if shown[name] else {}  # the next photo: skip on
            shown[name] = shown_photo(client.get("/review", params=params).text)
            assert shown[name] is not None
            seen[name].add(shown[name])
            other = "ben" if name == "anna" else "anna"
            assert shown[name] != shown[other]
            # Each holds the photo they are shown, and no other.
            assert claims(nights.settings) == {shown[n]: n for n in clients if shown[n] is not None}
    # Taking turns, each skipped the photo the other held: together they went round it all.
    assert seen["anna"] | seen["ben"] == set(
        nights.flagged[nights.first] + nights.flagged[nights.last]
    )


def test_an_expired_claim_goes_back_to_the_pool(nights):
    anna, ben = logged_in(nights.settings, "anna"), logged_in(nights.settings, "ben")
    first = shown_photo(anna.get("/review").text)
    assert shown_photo(ben.get("/review").text) != first  # anna holds it

    expire_claim(nights.settings, first)
    ben_again = logged_in(nights.settings, "ben")  # ben, in a second window
    assert shown_photo(ben_again.get("/review").text) == first
    assert claims(nights.settings)[first] == "ben"


def test_a_decision_on_a_photo_another_reviewer_holds_is_refused(nights):
    anna, ben = logged_in(nights.settings, "anna"), logged_in(nights.settings, "ben")
    photo = shown_photo(anna.get("/review").text)
    token = csrf_of(ben.get("/review").text)

    refused = ben.post(f"/review/{photo}", data={"decision": "tops/shirt", "csrf": token})

    assert refused.status_code == 409
    assert f"anna is deciding {prediction(nights.settings, photo).file_name} right now" in (
        refused.text
    )
    assert "Nothing was saved" in refused.text
    assert reviews_of(nights.settings, photo) == []
    opened = ben.get(f"/review/{photo}")  # nor is it shown to ben by its address
    assert opened.status_code == 409 and "anna is deciding" in opened.text
    assert claims(nights.settings)[photo] == "anna"

    # Once anna's claim has run out, ben may take it over and decide.
    expire_claim(nights.settings, photo)
    decide(ben, photo, "tops/shirt")
    assert [(r.reviewer, r.sub_category) for r in reviews_of(nights.settings, photo)] == [
        ("ben", "shirt")
    ]
    assert photo not in claims(nights.settings)  # decided: let go


def test_concurrent_claims_on_one_photo_have_one_winner(nights):
    """Eight desk connections claim the same photo at the same instant: one gets it."""
    photo = nights.flagged[nights.first][-1]
    sessions = session_factory(nights.settings.database_url)
    start = threading.Barrier(8)
    won: list[str] = []

    def claim(reviewer: str) -> None:
        with sessions.begin() as session:
            session.connection()  # the transaction is open before the race starts
            start.wait()
            if crud.claim_photo(session, prediction_id=photo, reviewer=reviewer, seconds=300):
                won.append(reviewer)

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert claims(nights.settings) == {photo: won[0]}


def export_rows(use_settings, settings, tmp_path) -> dict[str, dict]:
    use_settings(settings)
    out = tmp_path / "returns.csv"
    result = CliRunner().invoke(main, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as fh:
        return {row["content_hash"]: row for row in csv.DictReader(fh)}


def training_set(use_settings, settings, out) -> set[str]:
    """``export-training-set`` into ``out``: the main/sub/name of every copy."""
    use_settings(settings)
    result = CliRunner().invoke(main, ["export-training-set", str(out)])
    assert result.exit_code == 0, result.output
    return {p.relative_to(out).as_posix() for p in out.glob("*/*/*")}


def copy_name(row) -> str:
    name = Path(row.file_name)
    return f"{name.stem}-{row.content_hash[:12]}{name.suffix.lower()}"


def test_undo_takes_back_the_reviewers_last_decision_and_keeps_it_as_history(
    nights, use_settings, tmp_path
):
    anna, ben = logged_in(nights.settings, "anna"), logged_in(nights.settings, "ben")
    photo = shown_photo(anna.get("/review").text)
    row = prediction(nights.settings, photo)
    decide(anna, photo, "bottoms/skirt")
    others = shown_photo(ben.get("/review").text)
    decide(ben, others, "tops/sweater")  # ben's decision is ben's to undo, not anna's
    assert shown_photo(anna.get("/review").text) != photo
    exported = export_rows(use_settings, nights.settings, tmp_path)[row.content_hash]
    assert exported["reviewed_sub_category"] == "skirt"
    before = training_set(use_settings, nights.settings, tmp_path / "before")
    assert f"bottoms/skirt/{copy_name(row)}" in before

    page = anna.get("/review").text
    assert f"Undo my last decision: bottoms / skirt for {row.file_name}" in page
    response = anna.post("/undo", data={"csrf": csrf_of(page)})

    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/review/{photo}")
    again = anna.get(response.headers["location"]).text
    assert f"Undone: bottoms / skirt for {row.file_name}. Decide it again." in again
    assert shown_photo(again) == photo and claims(nights.settings)[photo] == "anna"
    (undone,) = reviews_of(nights.settings, photo)  # recorded, not deleted
    assert undone.undone_at is not None and undone.sub_category == "skirt"
    assert "(undone " in again and "(counts)" not in again
    assert [r.undone_at for r in reviews_of(nights.settings, others)] == [None]

    # The undone decision counts nowhere: back in the queue, out of the CSV and training set.
    assert shown_photo(ben.get("/review").text) != photo  # anna holds it again, to decide anew
    rows = export_rows(use_settings, nights.settings, tmp_path)
    assert rows[row.content_hash]["reviewed_by"] == ""
    assert rows[row.content_hash]["reviewed_sub_category"] == ""
    assert rows[prediction(nights.settings, others).content_hash]["reviewed_by"] == "ben"
    after = training_set(use_settings, nights.settings, tmp_path / "after")
    assert not any(p.endswith(copy_name(row)) for p in after)
    assert f"tops/sweater/{copy_name(prediction(nights.settings, others))}" in after

    # Decided again: both rows stay, the new one counts.
    decide(anna, photo, "tops/t-shirt")
    history = reviews_of(nights.settings, photo)
    assert [(r.sub_category, r.undone_at is None) for r in history] == [
        ("skirt", False),
        ("t-shirt", True),
    ]
    exported = export_rows(use_settings, nights.settings, tmp_path)[row.content_hash]
    assert exported["reviewed_sub_category"] == "t-shirt"
    page = anna.get(f"/review/{photo}").text
    assert page.index("tops / t-shirt by anna") < page.index("bottoms / skirt by anna")
    assert "(counts)" in page


def test_undo_goes_back_one_decision_at_a_time_and_then_says_there_is_none(nights):
    with session_factory(nights.settings.database_url).begin() as session:
        session.execute(update(Review).values(undone_at=datetime.now(UTC)))
    anna = logged_in(nights.settings, "anna")
    first = shown_photo(anna.get("/review").text)
    decide(anna, first, "tops/shirt")
    second = shown_photo(anna.get("/review").text)
    decide(anna, second, "tops/shirt")

    for expected in (second, first):
        token = csrf_of(anna.get("/review").text)
        assert (
            anna.post("/undo", data={"csrf": token})
            .headers["location"]
            .startswith(f"/review/{expected}")
        )
    page = anna.get("/review").text
    assert "Undo my last decision" not in page
    response = anna.post("/undo", data={"csrf": csrf_of(page)})
    assert response.headers["location"].startswith("/review")
    assert "You have no decision left to undo." in anna.get(response.headers["location"]).text
    assert anna.post("/undo", data={}).status_code == 403  # a form like any other


def test_the_progress_page_counts_each_reviewers_day_in_the_desks_time_zone(nights):
    settings = nights.settings.model_copy(update={"timezone": "Pacific/Auckland"})
    sessions = session_factory(settings.database_url)
    with sessions.begin() as session:
        session.execute(update(Review).values(undone_at=datetime.now(UTC)))
    anna, ben = logged_in(settings, "anna"), logged_in(settings, "ben")
    decided = []
    for client, name in ((anna, "anna"), (anna, "anna"), (anna, "anna"), (ben, "ben")):
        photo = shown_photo(client.get("/review").text)
        model = prediction(settings, photo)
        correct = name == "ben" or len(decided) == 0
        choice = "bottoms/skirt" if model.sub_category != "skirt" else "tops/shirt"
        decide(client, photo, f"{model.main_category}/{model.sub_category}" if correct else choice)
        decided.append(photo)
    # The day in Auckland: anna decided 10 min, 11 min and 11 min 40 s after its midnight
    # (gaps of 60 and 40 s), and once more just before it, yesterday there.
    start, _ = day_bounds(ZoneInfo("Pacific/Auckland"), datetime.now(UTC))
    moments = [timedelta(minutes=10), timedelta(minutes=11), timedelta(minutes=11, seconds=40)]
    with sessions.begin() as session:
        ids = session.scalars(
            select(Review.id).where(Review.undone_at.is_(None)).order_by(Review.id)
        ).all()
        for review_id, offset in zip(ids[:3], moments, strict=True):
            session.execute(
                update(Review).where(Review.id == review_id).values(reviewed_at=start + offset)
            )
        yesterday = Review(
            prediction_id=decided[0],
            reviewer="anna",
            main_category="tops",
            sub_category="shirt",
            reviewed_at=start - timedelta(seconds=1),
        )
        session.add(yesterday)
        session.flush()
        session.execute(update(Review).where(Review.id == ids[3]).values(reviewed_at=start))

    page = anna.get("/progress")

    assert page.status_code == 200
    text = page.text
    day = datetime.now(ZoneInfo("Pacific/Auckland")).date().isoformat()
    assert f"Today, {day} <small>(Pacific/Auckland)</small>" in text
    table = text[text.index('id="reviewers"') : text.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert "anna" in rows[0] and "ben" in rows[1]  # most decisions first
    cells = [[c.split("</td>")[0].strip() for c in r.split("<td")[1:]] for r in rows]
    assert [c[1:] for c in cells] == [
        ['class="num">3', 'class="num">67% <small>(2)</small>', 'class="num">50'],
        ['class="num">1', 'class="num">0% <small>(0)</small>', 'class="num">–'],
    ]
    # The team: what is left per night, and the photo waiting longest.
    nights_table = text[text.index('id="nights"') :]
    for sweep in (nights.first, nights.last):
        assert f"(sweep {sweep})" in nights_table
    assert f"(sweep {nights.quiet})" not in nights_table  # it flagged nothing
    oldest = text[text.index('id="oldest"') :]
    first_left = min(
        p for p in nights.flagged[nights.first] if all(r.undone_at for r in reviews_of(settings, p))
    )
    assert prediction(settings, first_left).file_name in oldest
    assert 'href="/progress"' in anna.get("/review").text  # linked from the header
