"""The review desk as a reviewer uses it: the photos flagged for review, most doubtful first
(or newest night first), with the model's decision and its next best guesses; confirm or
correct, go on to the next; decide a photo again; and what the CSV then says."""

import csv
import io
import re

import pytest
from click.testing import CliRunner
from desk_support import (
    csrf_of,
    decide,
    logged_in,
    prediction,
    queue_of,
    reviews_of,
    shown_photo,
)

from cli import main
from models import Prediction
from refund_sorter.crud import as_utc
from refund_sorter.db import session_factory

pytestmark = [pytest.mark.services, pytest.mark.model]


def undecided(nights, sweep: int) -> list[int]:
    return [p for p in nights.flagged[sweep] if not reviews_of(nights.settings, p)]


def by_doubt(nights, photos: list[int]) -> list[int]:
    """``photos`` most doubtful first: the smallest margin between the two best subs."""
    return sorted(photos, key=lambda p: (prediction(nights.settings, p).sub_margin, p))


def test_the_page_shows_the_prediction_and_the_next_best_guesses(nights):
    client = logged_in(nights.settings)

    page = client.get("/review").text

    photo = prediction(nights.settings, shown_photo(page))
    flagged = undecided(nights, nights.last) + undecided(nights, nights.first)
    assert photo.id == by_doubt(nights, flagged)[0]  # the most doubtful first
    assert photo.sub_margin == min(prediction(nights.settings, p).sub_margin for p in flagged)
    assert f'src="/photos/{photo.id}"' in page and photo.file_name in page
    assert f"{photo.main_category} <small>{100 * photo.main_confidence:.0f}%</small>" in page
    assert f"{photo.sub_category} <small>{100 * photo.sub_confidence:.0f}%</small>" in page
    best, *others = photo.top_subs
    assert (best["main"], best["sub"]) == (photo.main_category, photo.sub_category)
    assert len(others) == 2
    for key, other in enumerate(others, start=2):
        assert re.search(rf'data-key="{key}"\s+value="{other["main"]}/{other["sub"]}"', page), other
    # Every category of the model can be chosen, and nothing else.
    other = page[page.index('class="other"') :]
    other = other[: other.index("</form>")]
    options = re.findall(r'<option value="([^"]+)"', other)
    predicted = f"{photo.main_category}/{photo.sub_category}"
    assert re.search(rf'<option value="{predicted}"\s+selected>', other)  # preselected
    assert sorted(options) == sorted(
        [
            "bottoms/jeans",
            "bottoms/skirt",
            "tops/shirt",
            "tops/sweater",
            "tops/t-shirt",
        ]
    )
    assert "anna" in page  # who is deciding


def test_confirm_then_correct_and_move_on(nights):
    client = logged_in(nights.settings)
    queue = queue_of(client)
    assert queue == by_doubt(
        nights, undecided(nights, nights.last) + undecided(nights, nights.first)
    )
    first, second = queue[0], queue[1]
    predicted = prediction(nights.settings, first)

    decide(client, first, f"{predicted.main_category}/{predicted.sub_category}")
    page = client.get("/review").text
    assert f"Saved {predicted.main_category} / {predicted.sub_category}" in page
    assert shown_photo(page) == second

    wrong = prediction(nights.settings, second)
    correction = wrong.top_subs[1]
    decide(client, second, f"{correction['main']}/{correction['sub']}")

    assert shown_photo(client.get("/review").text) == queue[2]
    assert queue_of(client) == queue[2:]
    (confirmed,) = reviews_of(nights.settings, first)
    assert (confirmed.reviewer, confirmed.main_category, confirmed.sub_category) == (
        "anna",
        predicted.main_category,
        predicted.sub_category,
    )
    (corrected,) = reviews_of(nights.settings, second)
    assert (corrected.main_category, corrected.sub_category) == (
        correction["main"],
        correction["sub"],
    )
    assert corrected.reviewed_at >= confirmed.reviewed_at


def test_a_category_outside_the_models_taxonomy_is_refused(nights):
    client = logged_in(nights.settings)
    photo = undecided(nights, nights.first)[0]
    token = csrf_of(client.get(f"/review/{photo}").text)

    for decision in ("tops/hoodie", "shoes/jeans", "tops", "", "../../etc/passwd"):
        response = client.post(f"/review/{photo}", data={"decision": decision, "csrf": token})
        assert response.status_code == 400, decision
        assert "is not one of the model&#39;s categories" in response.text
        assert "tops/shirt" in response.text  # the message lists the ones there are
    assert reviews_of(nights.settings, photo) == []
    assert (
        client.post("/review/999999", data={"decision": "tops/shirt", "csrf": token}).status_code
        == 404
    )


def test_a_photo_decided_again_keeps_its_history_and_the_latest_answer_counts(
    nights, use_settings, tmp_path
):
    anna, ben = logged_in(nights.settings, "anna"), logged_in(nights.settings, "ben")
    photo = undecided(nights, nights.first)[0]

    decide(anna, photo, "tops/shirt")
    assert photo not in queue_of(anna)  # decided: out of the queue
    page = ben.get(f"/review/{photo}").text  # from the list of latest decisions
    assert f'href="/review/{photo}"' in ben.get("/review").text
    assert "tops / shirt by anna" in page
    decide(ben, photo, "bottoms/skirt")

    history = reviews_of(nights.settings, photo)
    assert [(r.reviewer, r.sub_category) for r in history] == [("anna", "shirt"), ("ben", "skirt")]
    page = anna.get(f"/review/{photo}").text
    assert page.index("bottoms / skirt by ben") < page.index("tops / shirt by anna")

    use_settings(nights.settings)
    out = tmp_path / "all.csv"
    result = CliRunner().invoke(main, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = {row["content_hash"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    row = lines[prediction(nights.settings, photo).content_hash]
    assert (row["reviewed_main_category"], row["reviewed_sub_category"]) == ("bottoms", "skirt")
    assert row["reviewed_by"] == "ben"
    assert row["reviewed_at"] == as_utc(history[-1].reviewed_at).isoformat(timespec="seconds")
    assert row["reviewed_at"].endswith("+00:00")
    with session_factory(nights.settings.database_url)() as session:
        quiet = session.query(Prediction).filter_by(sweep_run_id=nights.quiet).first()
    unreviewed = lines[quiet.content_hash]
    assert [unreviewed[c] for c in ("reviewed_main_category", "reviewed_by", "reviewed_at")] == [
        "",
        "",
        "",
    ]


def test_the_filters_select_a_night_and_a_predicted_category(nights):
    client = logged_in(nights.settings)

    assert queue_of(client, sweep=nights.first) == by_doubt(nights, undecided(nights, nights.first))
    # The old order is still there: newest night first, in the order the night found them.
    newest_first = undecided(nights, nights.last) + undecided(nights, nights.first)
    assert queue_of(client, order="night") == newest_first
    assert queue_of(client, order="night", sweep=nights.first) == undecided(nights, nights.first)
    assert queue_of(client, sweep=nights.quiet) == []  # that night flagged nothing
    assert "Nothing left to review here" in client.get(f"/review?sweep={nights.quiet}").text
    for category in ("tops", "bottoms", "tops/shirt", "bottoms/jeans"):
        main, _, sub = category.partition("/")
        shown = queue_of(client, category=category)
        expected = [
            p
            for p in undecided(nights, nights.last) + undecided(nights, nights.first)
            if prediction(nights.settings, p).main_category == main
            and (not sub or prediction(nights.settings, p).sub_category == sub)
        ]
        assert shown == by_doubt(nights, expected), category
    night_and_tops = queue_of(client, sweep=nights.last, category="tops")
    assert set(night_and_tops) <= set(nights.flagged[nights.last])

    # A filter the desk cannot apply says why, on a page, not in a traceback.
    for query, message in (
        ("category=hats", "&#39;hats&#39; is not one of the model&#39;s categories"),
        ("sweep=last-night", "sweep: Input should be a valid integer"),
        ("order=random", "&#39;random&#39; is not an order of the queue: doubt or night"),
    ):
        response = client.get(f"/review?{query}")
        assert response.status_code == 400
        assert message in response.text and "Traceback" not in response.text
