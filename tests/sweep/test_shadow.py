"""Shadow runs: while a candidate model is registered, the photos people will label (flagged
or audited) and a fixed share of the others are classified by it too, after each batch is
filed; its answers go to ``shadow_predictions`` and change nothing else. Through real
workers, the registry's own command, and the batch function that local mode runs."""

import dataclasses
import time
from hashlib import sha256
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sweep_support import (
    Incoming,
    TinyModel,
    add_images,
    add_unreadable,
    all_predictions,
    check_finished_sweep,
    files_under,
    get_run,
    read_csv,
    save_random_model,
    sweep_csv,
    wait_for_run,
)

from cli import main
from models import ItemStatus, ShadowPrediction, utcnow
from refund_sorter.audit import audit_draw
from refund_sorter.config import Settings, get_settings
from refund_sorter.db import session_factory, upgrade
from refund_sorter.shadow import shadow_draw, shadow_probability

SHADOW_RATE = 0.3
AUDIT_RATE = 0.25


# ---------------------------------------------------------------------------- the draw


def test_the_draw_is_fixed_near_the_rate_and_apart_from_the_audit():
    hashes = [sha256(str(i).encode()).hexdigest() for i in range(40_000)]
    drawn = [shadow_probability(h, 0.1, needs_review=False, audited=False) for h in hashes]
    assert drawn == [shadow_probability(h, 0.1, needs_review=False, audited=False) for h in hashes]
    # 4,000 expected; the binomial's standard deviation is 60.
    assert 4000 - 4 * 60 < sum(p is not None for p in drawn) < 4000 + 4 * 60
    assert set(drawn) == {0.1, None}
    # Independent of the audit's draw: among the photos audited at 10%, about 10% are drawn.
    audited = [h for h in hashes if audit_draw(h, "v1", "refund-sorter") < 0.1]
    both = sum(1 for h in audited if shadow_draw(h) < 0.1)
    assert abs(both - 0.01 * len(hashes)) < 4 * (0.01 * len(hashes)) ** 0.5
    # Flagged and audited photos always, with probability 1; rate 0: those alone.
    assert all(shadow_probability(h, 0.0, needs_review=True, audited=False) == 1.0 for h in hashes)
    assert all(shadow_probability(h, 0.0, needs_review=False, audited=True) == 1.0 for h in hashes)
    assert not any(shadow_probability(h, 0.0, needs_review=False, audited=False) for h in hashes)
    assert all(shadow_probability(h, 1.0, needs_review=False, audited=False) for h in hashes)


def test_the_shadow_rate_is_a_share(monkeypatch):
    monkeypatch.delenv("REFUND_SORTER_SHADOW_RATE", raising=False)
    assert Settings().shadow_rate == 0.1
    monkeypatch.setenv("REFUND_SORTER_SHADOW_RATE", "0.25")
    assert Settings().shadow_rate == 0.25
    for wrong in ("1.5", "-0.1", "some"):
        monkeypatch.setenv("REFUND_SORTER_SHADOW_RATE", wrong)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(main, ["runs"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 1
        assert "error: invalid setting: REFUND_SORTER_SHADOW_RATE" in result.output
        assert "Traceback" not in result.output


# -------------------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def serving(tmp_path_factory, tiny_model: TinyModel) -> TinyModel:
    """The tiny model's weights with a threshold of its own that flags about half the
    photos, so that flagged and confident ones both occur."""
    path = tmp_path_factory.mktemp("serving") / "serving.pt"
    version, _ = save_random_model(path, review_threshold=tiny_model.review_threshold)
    return dataclasses.replace(tiny_model, path=path, version=version)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, tiny_model: TinyModel) -> dict[str, TinyModel]:
    """Candidates of other weights: ``same`` takes the serving model's 32 px input, ``bigger``
    48 px (its input is decoded again), ``other`` is a third version."""
    from model_support import save_random_model as save

    root = tmp_path_factory.mktemp("candidates")
    made = {}
    for name, seed, size in (("same", 1, 32), ("bigger", 2, 48), ("other", 3, 32)):
        path = root / f"{name}.pt"
        version = save(
            path,
            tiny_model.taxonomy,
            seed=seed,
            image_size=size,
            review_threshold=0.3,
            note=f"candidate {name}",
        )
        made[name] = TinyModel(path, version, tiny_model.taxonomy, 0.3)
    return made


def night_settings(make_settings, serving: TinyModel, url: str | None, **overrides) -> Settings:
    values = dict(
        model_path=serving.path,
        review_threshold=None,  # each model's own (or the one set for its version)
        audit_rate=AUDIT_RATE,
        shadow_rate=SHADOW_RATE,
        precision="fp32",  # so the test's own forward pass gives the workers' figures
        batch_size=8,
        torch_threads=1,
    )
    return make_settings(url, **(values | overrides))


def register(model: TinyModel, *extra: str) -> None:
    result = CliRunner().invoke(
        main, ["model", "register", str(model.path), "--by", "anna", *extra]
    )
    assert result.exit_code == 0, result.output


def shadow_rows(settings: Settings) -> list[ShadowPrediction]:
    with session_factory(settings.database_url)() as session:
        return list(session.scalars(select(ShadowPrediction).order_by(ShadowPrediction.id)))


def expected_shadowed(settings: Settings, sweep_id: int) -> dict[int, float]:
    """Each ok prediction of the sweep that must be shadowed, with its probability."""
    return {
        p.id: prob
        for p in all_predictions(settings)
        if p.sweep_run_id == sweep_id and p.status == ItemStatus.OK
        if (
            prob := shadow_probability(
                p.content_hash, settings.shadow_rate, needs_review=p.needs_review, audited=p.audited
            )
        )
        is not None
    }


def wait_for_shadow_rows(settings: Settings, count: int, logs=(), timeout: float = 60.0):
    """The shadow rows, once there are ``count`` (a batch's shadow run follows its filing, so
    the last batch's rows may come just after its sweep has finished)."""
    deadline = time.monotonic() + timeout
    while len(rows := shadow_rows(settings)) < count:
        assert time.monotonic() < deadline, f"{len(rows)} shadow rows of {count}\n" + "\n".join(
            w.describe() for w in logs
        )
        time.sleep(0.2)
    return rows


def check_answers(
    settings: Settings, rows: list[ShadowPrediction], candidate: TinyModel, threshold: float
):
    """Every shadow row holds the candidate's own answer on its photo, as filed, at
    ``threshold``, and the forward times."""
    from classifier.predict import Classifier
    from refund_sorter.images import open_rgb

    clf = Classifier.from_path(candidate.path, "cpu", "fp32")
    predictions = {p.id: p for p in all_predictions(settings)}
    size = clf.checkpoint.image_size
    for row in rows:
        photo = predictions[row.prediction_id]
        data = Path(photo.final_path).read_bytes()
        (own,) = clf.predict_tensors([clf.preset(open_rgb(data, min_size=size))], threshold)
        assert row.model_version == candidate.version
        assert (row.main_category, row.sub_category) == (own.main, own.sub)
        assert row.main_confidence == pytest.approx(own.main_confidence, abs=1e-5)
        assert row.sub_confidence == pytest.approx(own.sub_confidence, abs=1e-5)
        assert row.review_threshold == pytest.approx(threshold)
        assert row.needs_review == (row.sub_confidence < threshold)
        assert row.candidate_seconds > 0 and row.serving_seconds > 0


# ---------------------------------------------------------------------- local mode, SQLite


@pytest.mark.model
def test_a_local_sweep_shadows_the_flagged_the_audited_and_the_draw(
    make_settings, use_settings, serving, candidates
):
    settings = night_settings(make_settings, serving, None)
    use_settings(settings)
    upgrade(settings.database_url)
    candidate = candidates["same"]
    register(candidate)
    add_images(Incoming(settings.incoming_dir), 60, seed=61)

    result = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    sweep_id = all_predictions(settings)[0].sweep_run_id
    expected = expected_shadowed(settings, sweep_id)
    rows = shadow_rows(settings)
    assert {r.prediction_id: r.shadow_probability for r in rows} == expected
    probabilities = list(expected.values())
    # Flagged, audited and drawn photos all occur, and some photos are not shadowed.
    assert 1.0 in probabilities and SHADOW_RATE in probabilities
    assert len(rows) < 60
    check_answers(settings, rows, candidate, candidate.review_threshold)


# -------------------------------------------------------------------- real workers, PostgreSQL


def night(
    settings: Settings, worker, seed: int, n: int = 80, bad: bool = False
) -> tuple[int, Incoming]:
    """Drop ``n`` photos (and unreadable files) into incoming/, sweep them through the
    worker, and return the sweep's id once it has finished, and what was dropped."""
    from producer.sweep import run_sweep
    from refund_sorter.celery_app import publish

    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, n, seed=seed)
    if bad:
        add_unreadable(incoming, seed=seed)
    report = run_sweep(settings, dispatch=publish, trigger="manual")
    return wait_for_run(settings, report.run.id, timeout=180, logs=[worker]).id, incoming


def desk_queue(settings: Settings) -> tuple[list[str], list[tuple], int]:
    """What the review desk offers: the photos in its order (by content hash), its nights
    (sweep, flagged, audits, left) and how many are left."""
    from review import queue

    with session_factory(settings.database_url)() as session:
        selection = queue.Selection()
        first = queue.next_photo(session, selection, reviewer="anna", now=utcnow())
        order, photo = [], first
        while photo is not None:
            order.append(photo.content_hash)
            photo = queue.next_photo(session, selection, reviewer="anna", now=utcnow(), after=photo)
            if photo is not None and photo.id == first.id:
                break
        nights = [(n.sweep, n.flagged, n.audits, n.left) for n in queue.nights(session)]
        return order, nights, queue.count_left(session, selection)


def what_the_night_left(settings: Settings, sweep_id: int) -> dict:
    """Everything a night leaves for people: files, rows, CSV and desk queue, with the times
    of day and the home folder taken out."""
    home = str(settings.home.absolute())
    rows = sorted(
        (
            p.content_hash,
            p.status,
            p.file_name,
            p.original_path.replace(home, "HOME"),
            (p.final_path or "").replace(home, "HOME"),
            p.main_category,
            p.sub_category,
            round(p.main_confidence or 0, 5),
            round(p.sub_confidence or 0, 5),
            p.needs_review,
            p.audited,
            p.audit_rate,
            p.review_threshold,
            p.sub_margin and round(p.sub_margin, 4),
            p.error,
        )
        for p in all_predictions(settings)
    )
    lines = read_csv(sweep_csv(settings, get_run(settings, sweep_id)))
    for line in lines:
        del line["classified_at"]
        for column, value in line.items():
            line[column] = value.replace(home, "HOME")
        for column in ("main_confidence", "sub_confidence"):  # 4 decimals: compared above
            line[column] = line[column] and round(float(line[column]), 3)
    return {
        "processed": files_under(settings.processed_dir),
        "failed": files_under(settings.failed_dir),
        "incoming": files_under(settings.incoming_dir),
        "rows": rows,
        "csv": sorted(lines, key=lambda line: line["content_hash"]),
        "desk": desk_queue(settings),
    }


@pytest.mark.model
@pytest.mark.services
def test_a_night_with_a_candidate_is_filed_as_the_same_night_without_one(
    make_pg_database, broker_url, make_settings, use_settings, serving, candidates, start_worker
):
    candidate = candidates["same"]
    left = {}
    for with_candidate in (True, False):
        settings = night_settings(make_settings, serving, make_pg_database(), broker_url=broker_url)
        use_settings(settings)
        if with_candidate:
            register(candidate)
            # The candidate's own threshold in force: the one set for its version.
            result = CliRunner().invoke(
                main,
                ["threshold", "--set", "0.35", "--model-version", candidate.version, "--by", "b"],
            )
            assert result.exit_code == 0, result.output
        worker = start_worker(settings)
        sweep_id, incoming = night(settings, worker, seed=71, bad=True)
        if with_candidate:
            expected = expected_shadowed(settings, sweep_id)
            rows = wait_for_shadow_rows(settings, len(expected), [worker])
            assert {r.prediction_id: r.shadow_probability for r in rows} == expected
            assert {1.0, SHADOW_RATE} <= set(expected.values())
            check_answers(settings, rows, candidate, 0.35)
            assert f"loaded candidate model {candidate.version} for shadow runs" in worker.log()
        else:
            assert shadow_rows(settings) == []
        check_finished_sweep(settings, sweep_id, incoming, serving.taxonomy)
        left[with_candidate] = what_the_night_left(settings, sweep_id)
        worker.stop()  # the next night's worker takes its place on the broker

    assert left[True]["desk"][0], "the desk has photos to offer"
    for what in ("processed", "failed", "incoming", "rows", "csv", "desk"):
        assert left[True][what] == left[False][what], what


@pytest.mark.model
@pytest.mark.services
@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_a_candidate_that_cannot_be_loaded_fails_nothing(
    fresh_pg_url, broker_url, make_settings, use_settings, serving, candidates, start_worker, fault
):
    settings = night_settings(make_settings, serving, fresh_pg_url, broker_url=broker_url)
    use_settings(settings)
    candidate = candidates["other"]
    register(candidate)
    stored = Path(settings.model_store) / f"{candidate.version}.pt"
    assert stored.is_file()
    if fault == "corrupt":
        stored.write_bytes(b"not a checkpoint at all" * 100)
    else:
        stored.unlink()
    worker = start_worker(settings)

    sweep_id, incoming = night(settings, worker, seed=72, n=80)  # batches of 32, 32, 16

    check_finished_sweep(settings, sweep_id, incoming, serving.taxonomy)
    assert shadow_rows(settings) == []
    errors = [
        line
        for line in worker.log().splitlines()
        if "ERROR" in line and f"candidate model {candidate.version}" in line
    ]
    assert len(errors) == 1, worker.describe()
    assert "no shadow runs of it in this process" in errors[0]
    assert "Traceback" not in worker.log()
    assert worker.log().count("batch of ") >= 3


@pytest.mark.model
@pytest.mark.services
def test_a_candidate_that_cannot_be_read_skips_the_shadow_run_and_nothing_else(
    fresh_pg_url, make_settings, use_settings, serving, candidates, monkeypatch, caplog
):
    # Asked last in the batch's reading session: on PostgreSQL the failed statement ends
    # that session's transaction, after the batch's own reads are done.
    from sqlalchemy import text

    from classifier.predict import Classifier
    from producer.sweep import run_sweep
    from refund_sorter import crud
    from worker.pipeline import process_batch

    settings = night_settings(make_settings, serving, fresh_pg_url)
    use_settings(settings)
    register(candidates["same"])
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 12, seed=73)
    items = []
    run = run_sweep(settings, dispatch=items.extend, trigger="manual").run
    monkeypatch.setattr(
        crud, "candidate_model", lambda session: session.execute(text("SELECT * FROM nowhere"))
    )
    clf = Classifier.from_path(serving.path, "cpu", "fp32")

    outcome = process_batch(items, clf, settings)

    assert (outcome.ok, outcome.failed, outcome.ignored, outcome.refused) == (12, 0, 0, 0)
    check_finished_sweep(settings, run.id, incoming, serving.taxonomy)
    assert shadow_rows(settings) == []
    assert "shadow run skipped: cannot read which candidate is registered" in caplog.text


@pytest.mark.model
@pytest.mark.services
def test_a_running_worker_follows_the_registered_candidate(
    fresh_pg_url, broker_url, make_settings, use_settings, serving, candidates, start_worker
):
    settings = night_settings(make_settings, serving, fresh_pg_url, broker_url=broker_url)
    use_settings(settings)
    worker = start_worker(settings)

    first, _ = night(settings, worker, seed=73, n=24)
    assert expected_shadowed(settings, first), "there were photos to shadow"
    assert shadow_rows(settings) == []  # no candidate, no shadow run

    register(candidates["same"])
    second, _ = night(settings, worker, seed=74, n=24)
    expected = expected_shadowed(settings, second)
    rows = wait_for_shadow_rows(settings, len(expected), [worker])
    assert {r.prediction_id for r in rows} == set(expected)
    check_answers(settings, rows, candidates["same"], 0.3)

    # Another candidate in its place, of another input size: its own input, decoded again.
    register(candidates["bigger"], "--replace")
    third, _ = night(settings, worker, seed=75, n=24)
    expected_third = expected_shadowed(settings, third)
    rows = wait_for_shadow_rows(settings, len(expected) + len(expected_third), [worker])
    later = [r for r in rows if r.prediction_id in expected_third]
    assert {r.prediction_id: r.shadow_probability for r in later} == expected_third
    assert {r.model_version for r in later} == {candidates["bigger"].version}
    check_answers(settings, later, candidates["bigger"], 0.3)
    assert worker.proc.poll() is None  # the same worker throughout
    log = worker.log()
    assert f"candidate model {candidates['same'].version} let go" in log
