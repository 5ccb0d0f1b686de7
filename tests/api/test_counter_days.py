"""Counter days: how the returns counter's rows are grouped (a sweep run of status
``counter`` per UTC day), that they never take or wait for the sweep lock, the stall check's
part for them, and the CSV of a day that ended. On SQLite and PostgreSQL."""

from datetime import timedelta
from pathlib import Path

import pytest
from api_support import record_counter_photo
from sqlalchemy import update
from sweep_support import all_runs, read_csv

from models import ItemStatus, Prediction, SweepStatus, utcnow
from producer.counter import close_ended_counter_days, resume_stalled_counter
from refund_sorter import crud
from refund_sorter.db import session_factory
from refund_sorter.messages import WorkItem
from registry.registry import serving_version

pytestmark = pytest.mark.model  # the settings name the tiny model's file


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def settings(request, make_settings):
    if request.param == "sqlite":
        from refund_sorter.db import upgrade

        made = make_settings()
        upgrade(made.database_url)
        return made
    return make_settings(request.getfixturevalue("fresh_pg_url"))


def record(settings, name: str, when=None) -> WorkItem:
    """A counter photo recorded as the API records it (``when``: its day)."""
    path = Path(settings.counter_dir).absolute() / f"{name}.jpg"
    return record_counter_photo(settings, path, name, when)


def test_one_counter_day_per_day_never_the_sweep_lock(settings):
    yesterday = utcnow() - timedelta(days=1)
    record(settings, "a" * 64)
    record(settings, "b" * 64)
    record(settings, "c" * 64, when=yesterday)

    days = [r for r in all_runs(settings) if r.status == SweepStatus.COUNTER]
    assert len(days) == 2
    assert {(r.trigger, r.found, r.enqueued, r.pending) for r in days} == {
        ("counter", 2, 2, 0),
        ("counter", 1, 1, 0),
    }
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        assert crud.running_sweep(session) is None
    # A night and a promotion take the lock as if the counter were not there.
    night = crud.begin_sweep(sessions, "manual")
    assert night.status == SweepStatus.RUNNING
    with sessions.begin() as session:
        with pytest.raises(crud.SweepRunning):
            crud.take_sweep_lock(session)
        session.rollback()
    with sessions.begin() as session:
        crud.abandon_sweeps(session, message="test over", sweep_id=night.id)
    with sessions.begin() as session:
        crud.release_sweep_lock(session, crud.take_sweep_lock(session))


def test_the_day_is_found_however_often_one_connection_asks(settings):
    # psycopg prepares a statement after five runs on a connection, and PostgreSQL plans it
    # generically after five more: the day's upsert must still find its partial index then.
    version = serving_version(settings)
    with session_factory(settings.database_url)() as session:
        days = {crud.counter_day(session, model_version=version) for _ in range(15)}
        session.commit()

    assert len(days) == 1


def test_the_stall_check_publishes_counter_photos_left_queued_once(settings):
    stuck = record(settings, "d" * 64)
    fresh = record(settings, "e" * 64)
    with session_factory(settings.database_url).begin() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.content_hash == stuck.content_hash)
            .values(created_at=utcnow() - timedelta(seconds=settings.sweep_stall_seconds + 5))
        )
    published = []

    # Something waits in the counter queue: a worker will take it, nothing to do.
    assert resume_stalled_counter(settings, published.extend, lambda: 1) == 0
    assert resume_stalled_counter(settings, published.extend, lambda: 0) == 1
    assert published == [stuck]
    # Claimed: the next check waits a full stall period for it.
    assert resume_stalled_counter(settings, published.extend, lambda: 0) == 0
    assert fresh not in published

    # A retry's countdown postpones the check for the photos it carries.
    with session_factory(settings.database_url).begin() as session:
        crud.postpone_counter_check(session, [fresh], utcnow() + timedelta(hours=1))
        row = session.query(Prediction).filter_by(content_hash=fresh.content_hash).one()
        assert crud.as_utc(row.created_at) > utcnow() + timedelta(minutes=59)


def test_a_day_that_ended_gets_its_csv_once_and_today_none(settings):
    settings = settings.model_copy(update={"sweep_stale_hours": 48})
    before = utcnow() - timedelta(days=2)
    yesterday = utcnow() - timedelta(days=1)
    done = record(settings, "f" * 64, when=before)
    waiting = record(settings, "0" * 64, when=yesterday)
    record(settings, "1" * 64)  # today's
    result = crud.ItemResult(done.content_hash, done.model_version, ItemStatus.OK, "/p/f.jpg")
    with session_factory(settings.database_url).begin() as session:
        crud.record_results(session, [result])

    [day] = close_ended_counter_days(settings)

    run = next(r for r in all_runs(settings) if r.id == day)
    assert run.finished_at is not None and run.status == SweepStatus.COUNTER
    [csv] = sorted(settings.export_dir.glob("counter-*.csv"))
    assert csv.name == f"counter-{before.date()}-{day:05d}.csv"
    [line] = read_csv(csv)
    assert (line["content_hash"], line["status"], line["sweep_run"]) == (
        done.content_hash,
        "ok",
        str(day),
    )
    assert close_ended_counter_days(settings) == []  # once
    # Yesterday still has a photo queued: it waits for it, until it is stale.
    stale = settings.model_copy(update={"sweep_stale_hours": 1})
    [older] = close_ended_counter_days(stale)
    assert older != day
    # Its CSV holds what was settled: a photo still queued is in no CSV, as at night.
    csv = settings.export_dir / f"counter-{yesterday.date()}-{older:05d}.csv"
    assert read_csv(csv) == [] and waiting.content_hash
    open_days = [r.id for r in all_runs(settings) if r.finished_at is None]
    assert len(open_days) == 1 and open_days[0] not in (day, older)  # today's


def test_a_night_leaves_a_photo_the_counter_is_classifying_to_the_counter(settings):
    """The same content in incoming/ while its counter row is queued: the night does not take
    the row over (the counter's worker would then refuse its own photo and leave its file
    behind); its copy waits a night and is filed as known."""
    from sweep_support import Incoming, add_images

    from producer.sweep import run_sweep

    incoming = Incoming(settings.incoming_dir)
    [(rel, content_hash)] = add_images(incoming, 1, seed=31).items()
    counter_photo = record(settings, content_hash)
    with session_factory(settings.database_url)() as session:
        before = session.query(Prediction).filter_by(content_hash=content_hash).one()

    enqueued = []
    night = run_sweep(settings, dispatch=enqueued.extend, trigger="manual").run

    assert enqueued == []
    assert (night.status, night.known, night.enqueued) == ("finished", 1, 0)
    with session_factory(settings.database_url)() as session:
        after = session.query(Prediction).filter_by(content_hash=content_hash).one()
    assert (after.sweep_run_id, after.original_path, after.status) == (
        before.sweep_run_id,
        counter_photo.path,
        ItemStatus.QUEUED,
    )
    assert (settings.incoming_dir / rel).is_file()


def test_a_photo_sent_again_just_after_a_promotion_waits_for_the_row_it_has(settings):
    """Queued for the model that served a moment ago: the same photo now waits for that row
    (as a night's photo is classified by the model it was queued for) instead of a second
    row under the same file, which the first worker to file it would leave without one."""
    from api.answers import Answers
    from api.app import Counter
    from api.metrics import ApiMetrics
    from api.photos import Photo

    sessions = session_factory(settings.database_url)
    path = Path(settings.counter_dir).absolute() / ("2" * 64 + ".jpg")
    with sessions.begin() as session:
        crud.create_api_token(session, name="anna", token_hash="h" * 64)
        day = crud.counter_day(session, model_version="served-before")
        first = crud.record_counter_photo(
            session,
            day_id=day,
            path=path,
            content_hash="2" * 64,
            model_version="served-before",
            token="anna",
        )
    counter = Counter(
        settings, sessions, rates=None, metrics=ApiMetrics(), answers=Answers(settings.broker_url)
    )

    row, final = counter.take(Photo(b"\xff\xd8", "2" * 64, ".jpg"), "anna")

    assert (row.id, row.model_version, final) == (first.id, "served-before", False)
    with sessions() as session:
        assert session.query(Prediction).count() == 1
        assert crud.photo_sent_by(session, prediction_id=first.id, token="anna") is not None
    assert not path.exists()  # nothing stored: the first request's file is the one
