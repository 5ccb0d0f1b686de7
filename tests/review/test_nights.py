"""The Nights pages and the night report on staged nights whose every figure is known: the
headline, the table of nights, one night's counts, failures by reason, drift and audit
accuracy; the plots as SVG images; nothing without a login; the report as one file."""

import base64
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import unescape
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from desk_support import SECRET_KEY, desk_client, logged_in
from nights_support import Photo, stage_night
from pydantic import SecretStr
from sweep_support import build_settings, postgres_database

from cli import main
from models import SweepStatus, utcnow
from refund_sorter import drift
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from review import nights, plots
from review.accuracy import Counts, figures, proportion, share

ZONE = "America/New_York"
SHIRT, JEANS = ("tops", "shirt"), ("bottoms", "jeans")
ERRORS = [
    "corrupt or truncated image: broken data stream when reading image file",
    "not an image (unrecognised content)",
    "corrupt or truncated image: image file is truncated (12 bytes not processed)",
]


def usual_mix(n: int) -> list[Photo]:
    return [Photo(*(SHIRT if i % 2 else JEANS)) for i in range(n)]


@dataclass
class Staged:
    settings: Settings
    old: int  # 2025-06-01 03:30 UTC: still 2025-05-31 in New York
    skipped: int
    abandoned: int
    empty: int  # finished, not one photo of its own
    last: int  # the last night: 9.1% failed, 20% flagged, its mix moved to shirts


@pytest.fixture(scope="module")
def staged(tmp_path_factory, review_model, accounts):
    now = utcnow().replace(second=0, microsecond=0)  # throughput buckets start on a minute
    last_night = (
        [Photo(*SHIRT, sub_confidence=0.4, flagged=True) for _ in range(6)]
        + [Photo(*SHIRT, audited=True, review=SHIRT) for _ in range(3)]
        + [Photo(*SHIRT, audited=True, review=("tops", "sweater"))]
        + [Photo(*SHIRT) for _ in range(18)]
        + [Photo(*JEANS) for _ in range(2)]
    )
    with postgres_database() as url:
        settings = build_settings(
            tmp_path_factory.mktemp("nights") / "home",
            url,
            review_model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr(SECRET_KEY),
            timezone=ZONE,
        )
        with session_factory(url).begin() as session:
            old = stage_night(
                session, datetime(2025, 6, 1, 3, 30, tzinfo=UTC), photos=usual_mix(40)
            )
            stage_night(session, now - timedelta(days=4), photos=usual_mix(40), failed=ERRORS[1:2])
            stage_night(session, now - timedelta(days=3), photos=usual_mix(40))
            skipped = stage_night(session, now - timedelta(days=2), status=SweepStatus.SKIPPED)
            abandoned = stage_night(
                session,
                now - timedelta(days=2, hours=-1),
                status=SweepStatus.ABANDONED,
                photos=usual_mix(5),
                queued=3,
            )
            empty = stage_night(session, now - timedelta(hours=36), known=7)
            last = stage_night(
                session,
                now - timedelta(hours=20),
                duration=timedelta(minutes=5),
                model_version="staged-model-2",
                photos=last_night,
                failed=ERRORS,
                deferred=1,
                known=4,
            )
        yield Staged(settings, old, skipped, abandoned, empty, last)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def cells(html: str, sweep: int) -> list[str]:
    """The text of each cell of the nights table's row for ``sweep``."""
    found = re.search(rf'<tr class="[^"]*" data-sweep="{sweep}">(.*?)</tr>', html, re.S)
    assert found, f"no row for sweep {sweep}"
    return [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", found[1], re.S)]


def table(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, f"no table {table_id}"
    return [
        [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body[1], re.S)
    ]


def the_drift(settings: Settings, sweep: int) -> drift.NightDrift:
    with session_factory(settings.database_url)() as session:
        return drift.night_drift(session, sweep, settings=settings)


def local_date(moment: datetime) -> date:
    return moment.astimezone(ZoneInfo(ZONE)).date()


@pytest.mark.model
@pytest.mark.services
def test_the_nights_page_answers_for_the_last_night_and_lists_the_others(staged):
    client = logged_in(staged.settings)
    page = client.get("/nights")
    assert page.status_code == 200
    html = page.text
    last = the_drift(staged.settings, staged.last)
    assert last.baseline_nights == 3 and last.night_photos == 30
    main, sub = last.levels["main"], last.levels["sub"]
    assert main.drifted  # 28 of 30 shirts against half and half
    with session_factory(staged.settings.database_url)() as session:
        started = nights.detail(session, staged.settings, staged.last).night.started_at

    headline = text_of(re.search(r'<div id="headline".*?</div>', html, re.S)[0])
    assert headline.startswith(
        f"Last night ({local_date(started)}): finished, 33 photos, 9.1% failed, 20.0% flagged, "
        f"drift over threshold (main PSI {main.psi:.2f}, sub PSI {sub.psi:.2f})"
    )
    assert "9.1% of its photos failed, above the warning level of 5.0%" in headline
    assert "Its category mix drifted from the 3 nights before it" in headline
    assert 'class="headline warn"' in html
    assert "is still running" not in headline and "No night finished" not in headline

    # classified, failed, later, queued, known, flagged, failed share, duration, photos/s,
    # audit accuracy, drift, model
    row = cells(html, staged.last)
    assert row[0] == local_date(started).isoformat()
    assert row[2:11] == ["30", "3", "1", "0", "4", "20.0%", "9.1%", "5 min", "0.1"]
    assert row[11] == nights.interval_words(proportion(3, 4))  # 3 of the 4 audits right
    assert row[11].startswith("75.0% [") and row[11].endswith("%] n=4")
    assert row[12] == f"{main.psi:.2f} / {sub.psi:.2f} drifted"
    assert row[1] == str(staged.last)  # finished: no mark
    assert row[13] == "staged-m"  # the version's first 8 characters (all of it on hover)
    assert "the blind audit sample" in html

    # A night without photos has blank ratios, never 0%.
    assert cells(html, staged.empty)[2:11] == ["0", "0", "0", "0", "7", "", "", "10 min", ""]
    # Nights by the day they started in New York; skipped runs are none; abandoned is marked.
    assert cells(html, staged.old)[0] == "2025-05-31"
    assert f'data-sweep="{staged.skipped}"' not in html
    assert re.search(rf'<tr class="abandoned" data-sweep="{staged.abandoned}">', html)
    assert cells(html, staged.abandoned)[1] == f"{staged.abandoned} abandoned"
    assert cells(html, staged.abandoned)[9] == ""  # it did not finish: no duration
    rows = re.findall(r'data-sweep="(\d+)"', html)
    assert [int(r) for r in rows][:2] == [staged.last, staged.empty]  # newest first
    assert len(rows) == 6

    for name in plots.TRENDS:
        assert f'src="/nights/plots/{name}.svg"' in html
    assert '<a class="nav" href="/nights">Nights</a>' in html


@pytest.mark.model
@pytest.mark.services
def test_one_night_in_full(staged):
    client = logged_in(staged.settings)
    page = client.get(f"/nights/{staged.last}")
    assert page.status_code == 200
    html = page.text
    headline = text_of(re.search(r'<div id="headline".*?</div>', html, re.S)[0])
    assert headline.startswith("Finished, 33 photos, 9.1% failed, 20.0% flagged, drift over")
    assert "above the warning level of 5.0%" in headline
    assert [r[:2] for r in table(html, "statuses")] == [
        ["ok", "30"],
        ["failed", "3"],
        ["deferred", "1"],
        ["queued", "0"],
        ["known", "4"],
    ]
    # Similar errors go together under their leading reason, most photos first.
    assert [r[:2] for r in table(html, "failures")] == [
        ["corrupt or truncated image", "2"],
        ["not an image (unrecognised content)", "1"],
    ]
    facts = {r[0]: r[1] for r in re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", html)}
    assert "staged-model-2" in facts["Model version"]
    assert text_of(facts["Flagged share"]) == "20.0% (6 of 30 classified)"
    assert text_of(facts["Failed share"]) == "9.1% (3 of 33 classified or failed)"
    audit = text_of(facts["Audit accuracy (blind audit sample)"])
    assert f"sub {share(proportion(3, 4))}" in audit
    assert f"main {share(proportion(4, 4))}" in audit
    assert "4 of 4 audits decided" in audit
    night_drift = the_drift(staged.settings, staged.last)
    for level, row in zip(("main", "sub"), table(html, "drift"), strict=True):
        d = night_drift.levels[level]
        assert row[:3] == [level, f"{d.psi:.3f}", f"{d.chi2_p_value:.3g}"]
        assert row[5] == ("drifted" if d.drifted else "ok")
    for name in plots.NIGHT_PLOTS:
        assert f'src="/nights/{staged.last}/plots/{name}.svg"' in html

    empty = client.get(f"/nights/{staged.empty}").text
    assert 'id="no-failures"' in empty and 'id="no-baseline"' in empty
    assert text_of(re.search(r'<td id="flagged-share">(.*?)</td>', empty, re.S)[1]) == ""
    for missing in (staged.skipped, 999999):
        response = client.get(f"/nights/{missing}")
        assert response.status_code == 404
        assert f"No night has the sweep number {missing}" in response.text


@pytest.mark.model
@pytest.mark.services
def test_the_night_s_reads_match_the_staged_rows(staged):
    with session_factory(staged.settings.database_url)() as session:
        found = nights.detail(session, staged.settings, staged.last)
        abandoned = nights.detail(session, staged.settings, staged.abandoned)
    # 30 photos evenly over 5 minutes: 6 in each minute.
    assert found.throughput.bucket_seconds == 60
    assert [n for _, n in found.throughput.buckets] == [6, 6, 6, 6, 6]
    assert sum(found.histograms["sub"]) == 30
    assert found.histograms["sub"][8] == 6  # the flagged photos, at 0.4
    assert found.histograms["sub"][16] == 24  # the others, at 0.8
    assert found.night.images_per_second == pytest.approx(30 / 300)
    assert abandoned.night.status == SweepStatus.ABANDONED
    assert abandoned.night.photos["queued"] == 3
    assert abandoned.night.duration_seconds is None and abandoned.night.images_per_second is None


@pytest.mark.model
@pytest.mark.services
def test_the_plots_are_svg_images_served_by_the_desk(staged):
    client = logged_in(staged.settings)
    paths = [f"/nights/plots/{name}.svg" for name in plots.TRENDS]
    for sweep in (staged.last, staged.empty):
        paths += [f"/nights/{sweep}/plots/{name}.svg" for name in plots.NIGHT_PLOTS]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/svg+xml", path
        assert "default-src 'self'" in response.headers["content-security-policy"]
        root = ET.fromstring(response.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg", path
        assert len(root) > 0
    assert client.get("/nights/plots/nope.svg").status_code == 404
    assert client.get(f"/nights/{staged.last}/plots/nope.svg").status_code == 404
    assert client.get(f"/nights/{staged.skipped}/plots/status.svg").status_code == 404


@pytest.mark.model
@pytest.mark.services
def test_nobody_sees_the_nights_without_a_login(staged):
    client = desk_client(staged.settings)
    for path in (
        "/nights",
        f"/nights/{staged.last}",
        "/nights/plots/failed.svg",
        f"/nights/{staged.last}/plots/status.svg",
    ):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2Fnights"), path
        assert b"<svg" not in response.content


@pytest.mark.model
@pytest.mark.services
def test_the_report_is_one_self_contained_file(staged, use_settings, tmp_path):
    use_settings(staged.settings)
    out = tmp_path / "reports" / "last-night.html"
    result = CliRunner().invoke(main, ["report", "--out", str(out)])  # the last night
    assert result.exit_code == 0, result.output
    assert f"(sweep {staged.last}, finished)" in result.output
    html = out.read_text(encoding="utf-8")
    assert 'src="http' not in html and "href=" not in html and "/static" not in html
    assert "<script" not in html and '<link rel="stylesheet"' not in html
    assert "--accent: #1f6feb" in html  # the desk's stylesheet, inlined
    images = re.findall(r'<img class="plot" id="plot-([\w-]+)" src="([^"]+)"', html)
    assert sorted(name for name, _ in images) == sorted(plots.NIGHT_PLOTS)
    for _, src in images:
        assert src.startswith("data:image/svg+xml;base64,")
        root = ET.fromstring(base64.b64decode(src.split(",", 1)[1]))
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = text_of(html)
    assert "Finished, 33 photos, 9.1% failed, 20.0% flagged" in text
    assert "corrupt or truncated image 2" in text
    assert "staged-model-2" in text
    assert f"sub {share(proportion(3, 4))}" in text

    other = tmp_path / "empty.html"
    result = CliRunner().invoke(main, ["report", str(staged.empty), "--out", str(other)])
    assert result.exit_code == 0, result.output
    assert "Finished, 0 photos" in text_of(other.read_text(encoding="utf-8"))


@pytest.mark.model
@pytest.mark.services
def test_the_report_refuses_plainly(staged, use_settings, tmp_path):
    use_settings(staged.settings)
    for sweep in (staged.skipped, 999999):
        result = CliRunner().invoke(main, ["report", str(sweep), "--out", str(tmp_path / "r.html")])
        assert result.exit_code == 1
        assert f"error: no night has the sweep number {sweep}" in result.output
        assert "Traceback" not in result.output
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path / "a-file" / "r.html")])
    assert result.exit_code == 1
    assert "error: cannot write" in result.output and "Traceback" not in result.output


def night(
    sweep: int,
    status: str,
    started: datetime,
    *,
    ok: int = 100,
    failed: int = 0,
    flagged: int = 10,
) -> nights.NightFigures:
    photos = dict.fromkeys(nights.STATUSES, 0) | {"ok": ok, "failed": failed}
    finished = started + timedelta(minutes=30) if status != SweepStatus.RUNNING else None
    counts = Counts(photos=ok, flagged=flagged)
    return nights.NightFigures(
        sweep, status, "v", started, finished, started.date(), photos, flagged,
        figures([(counts, {})]) if ok else None, None,
    )  # fmt: skip


def test_the_headline_warns_when_last_night_did_not_happen_or_went_wrong():
    settings = Settings(timezone="UTC")
    now = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    last = night(2, "finished", datetime(2026, 11, 5, 2, 0, tzinfo=UTC))
    before = night(1, "finished", datetime(2026, 11, 4, 2, 0, tzinfo=UTC))

    fine = nights.headline([last, before], settings, now)
    assert fine.warnings == [] and fine.night is last
    assert fine.text == (
        "Last night (2026-11-05): finished, 100 photos, 0.0% failed, 10.0% flagged, "
        "no drift figure (no baseline night yet)"
    )

    running = night(3, "running", datetime(2026, 11, 6, 2, 0, tzinfo=UTC))
    late = nights.headline([running, last, before], settings, now + timedelta(days=1, hours=2))
    assert late.night is last
    assert late.warnings[0] == "The newest sweep (3, started 2026-11-06 02:00) is still running."
    assert late.warnings[1].startswith("No night finished in the last 26 hours")

    failing = night(2, "finished", last.started_at, ok=90, failed=10)
    (warning,) = nights.headline([failing], settings, now).warnings
    assert warning.startswith("10.0% of its photos failed, above the warning level of 5.0%")

    assert nights.headline([], settings, now).warnings == ["No night has finished yet."]
    abandoned = night(4, "abandoned", last.started_at, ok=0)
    only = nights.headline([abandoned], settings, now)
    assert only.night is None and "was abandoned" in only.warnings[0]

    no_photos = night(5, "finished", last.started_at, ok=0, flagged=0)
    assert nights.headline([no_photos], settings, now).text == (
        "Last night (2026-11-05): finished, 0 photos"
    )
    assert no_photos.flagged_share is None and no_photos.failed_share is None

    # A day of the returns counter, open since midnight, is listed but is no night.
    counter = night(6, "counter", datetime(2026, 11, 5, 0, 0, tzinfo=UTC))
    with_counter = nights.headline([counter, last, before], settings, now)
    assert with_counter.warnings == [] and with_counter.night is last


def test_the_plots_use_the_desk_s_colours():
    from review.app import HERE

    css = (HERE / "static" / "review.css").read_text()
    root = dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", css.split("}", 1)[0]))
    assert {name: root[name] for name in plots.COLOURS} == plots.COLOURS


@pytest.mark.model
@pytest.mark.services
def test_a_day_of_the_returns_counter_is_listed_and_shown_beside_the_nights(
    tmp_path, review_model, accounts
):
    now = utcnow().replace(second=0, microsecond=0)
    with postgres_database() as url:
        settings = build_settings(
            tmp_path / "home",
            url,
            review_model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr(SECRET_KEY),
        )
        with session_factory(url).begin() as session:
            night = stage_night(session, now - timedelta(hours=20), photos=usual_mix(10))
            counter = stage_night(
                session,
                now.replace(hour=0, minute=0),
                status=SweepStatus.COUNTER,
                photos=usual_mix(4),
            )
        client = logged_in(settings)
        page = client.get("/nights")
        assert page.status_code == 200
        headline = text_of(re.search(r'<div id="headline".*?</div>', page.text, re.S)[0])
        night_date = (now - timedelta(hours=20)).astimezone(UTC).date()  # the desk's zone: UTC
        assert headline.startswith(f"Last night ({night_date})")
        assert "still running" not in headline and "abandoned" not in headline
        assert cells(page.text, counter)[2] == "4"  # its photos, listed as a night's are
        assert cells(page.text, night)[2] == "10"
        day = client.get(f"/nights/{counter}")
        assert day.status_code == 200 and "4 photos" in text_of(day.text)
