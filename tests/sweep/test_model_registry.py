"""The model registry with the sweeps it serves (registry/registry.py, cli/registry.py):
the first serving model of a new install, `refund-sorter model register | list | promote |
rollback` and what each records, an upgraded database's versions, workers that switch to a
promoted model without a restart, and promotions ordered with the sweeps by the sweep lock.

On SQLite and PostgreSQL where the database is all that matters; real Celery workers over
Redis, and PostgreSQL, where the workers and the lock are what is tested.
"""

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import DateTime, bindparam, text
from sweep_support import (
    Incoming,
    ServiceProcess,
    add_images,
    all_predictions,
    get_run,
    save_random_model,
    service_env,
    wait_for_run,
)

from cli import main
from models import ItemStatus, ModelRole, Prediction, PromotionAction, SweepStatus
from producer.sweep import resume_stalled_sweep, run_sweep
from refund_sorter import crud
from refund_sorter.celery_app import publish
from refund_sorter.db import session_factory, upgrade
from refund_sorter.errors import UserError
from registry import registry

pytestmark = pytest.mark.model

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=DATABASES)
def settings(request, make_settings, use_settings):
    """A new install's settings (the CLI reads them too), on a migrated database."""
    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    settings = make_settings(url)
    use_settings(settings)
    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """Two more models (other weights, so other versions): (path, version) each."""
    root = tmp_path_factory.mktemp("other_models")
    found = []
    for seed, name in ((5, "b"), (6, "c")):
        version, _ = save_random_model(root / f"{name}.pt", seed=seed, note=f"model {name}")
        found.append((root / f"{name}.pt", version))
    return found


# These random-weight models have no labelled photos to be judged on: the promotion gate
# (cli.comparison) would refuse them, so they are promoted past it, as an operator would.
PAST_THE_GATE = ("--force", "--reason", "random weights for the registry's tests")


def model_cli(*args):
    return CliRunner().invoke(main, ["model", *map(str, args)])


def local_night(settings, seed: int, n: int = 6) -> list[Prediction]:
    """``sweep --local`` over ``n`` new photos, as an operator runs it: the rows it made."""
    before = {p.id for p in all_predictions(settings)}
    add_images(Incoming(settings.incoming_dir), n, seed=seed, prefix=f"night{seed}")
    result = CliRunner().invoke(main, ["sweep", "--local"])
    assert result.exit_code == 0, result.output
    rows = [p for p in all_predictions(settings) if p.id not in before]
    assert len(rows) == n and {p.status for p in rows} == {ItemStatus.OK}
    return rows


def entries(settings) -> dict:
    with session_factory(settings.database_url)() as session:
        return {e.version: e for e in crud.model_entries(session)}


def changes(settings) -> list[tuple]:
    """(action, version, replaced, by) of each change of the serving model, oldest first."""
    with session_factory(settings.database_url)() as session:
        history = crud.promotion_history(session, last=100)
    return [(c.action, c.version, c.replaced, c.by) for c in reversed(history)]


def stored_models(settings) -> list[str]:
    """The model store's model files. Beside them, only the OpenVINO networks made from them
    where OpenVINO ran them, each named after its model's version."""
    names = sorted(p.name for p in settings.model_store.iterdir())
    models = [n for n in names if ".openvino-" not in n]
    networks = [n for n in names if n not in models]
    assert all(f"{n.split('.openvino-')[0]}.pt" in models for n in networks), names
    return models


# --------------------------------------------------------------------- register and promote


def test_a_new_install_serves_the_file_at_model_path(settings, tiny_model):
    assert entries(settings) == {}

    rows = local_night(settings, seed=51)

    assert {p.model_version for p in rows} == {tiny_model.version}
    entry = entries(settings)[tiny_model.version]
    assert (entry.role, entry.registered_by, entry.promoted_by) == (
        ModelRole.SERVING,
        registry.MODEL_PATH_BY,
        registry.MODEL_PATH_BY,
    )
    stored = settings.model_store / entry.file_name
    assert stored.read_bytes() == tiny_model.path.read_bytes()
    assert entry.figures["note"] == "random weights for tests"
    assert changes(settings) == [("first", tiny_model.version, None, registry.MODEL_PATH_BY)]
    # Stored once, under its version, and nothing else but the OpenVINO network made from it
    # where OpenVINO runs it: no temporary file left behind.
    local_night(settings, seed=59)
    assert stored_models(settings) == [f"{tiny_model.version}.pt"]


def test_register_promote_and_roll_back_each_recorded_with_who(settings, tiny_model, other_models):
    a = tiny_model.version
    (b_path, b), _ = other_models
    local_night(settings, seed=52)

    result = model_cli("register", b_path, "--by", "anna")

    assert result.exit_code == 0, result.output
    assert f"registered model {b} as the candidate, by anna" in result.output
    assert "note: model b" in result.output  # the figures the checkpoint carries
    assert (settings.model_store / f"{b}.pt").read_bytes() == b_path.read_bytes()
    again = model_cli("register", b_path, "--by", "anna")
    assert again.exit_code == 0, again.output
    assert f"model {b} is already registered: candidate, registered " in again.output
    # A candidate does not serve.
    assert {p.model_version for p in local_night(settings, seed=53)} == {a}

    result = model_cli("promote", b, "--by", "ben", *PAST_THE_GATE)

    assert result.exit_code == 0, result.output
    assert f"promoted: model {b} serves in place of model {a}, by ben" in result.output
    assert {p.model_version for p in local_night(settings, seed=54)} == {b}
    twice = model_cli("promote", b, "--by", "ben")
    assert twice.exit_code == 0 and f"model {b} serves already (since " in twice.output

    result = model_cli("rollback", "--by", "carl")

    assert result.exit_code == 0, result.output
    assert f"rolled back: model {a} serves in place of model {b}, by carl" in result.output
    assert {p.model_version for p in local_night(settings, seed=55)} == {a}
    known = entries(settings)
    assert (known[a].role, known[a].promoted_by, known[a].retired_at) == ("serving", "carl", None)
    assert (known[b].role, known[b].registered_by, known[b].promoted_by) == (
        "retired",
        "anna",
        "ben",
    )
    assert known[b].retired_by == "carl"
    assert changes(settings) == [
        ("first", a, None, registry.MODEL_PATH_BY),
        ("promote", b, a, "ben"),
        ("rollback", a, b, "carl"),
    ]
    # Nothing served before the first model.
    result = model_cli("rollback", "--by", "carl")
    assert result.exit_code == 1
    assert f"error: nothing to roll back to: no model served before model {a}" in result.output

    listing = model_cli("list")
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split() == ["version", "role", "registered", "promoted", "retired"]
    (b_line,) = (line for line in lines if line.startswith(b))
    assert b_line.split()[1] == "retired" and " anna " in b_line and b_line.endswith("carl")
    (a_line,) = (line for line in lines if line.startswith(a))
    assert a_line.split()[1] == "serving" and " carl " in a_line
    history = lines[lines.index("changes of the serving model, newest first (UTC):") + 1 :]
    assert [line.split()[2:4] for line in history] == [
        ["rollback", a],
        ["promote", b],
        ["first", a],
    ]
    assert history[0].endswith(f"{a} (replaced {b}) by carl")
    as_json = json.loads(model_cli("list", "--json").output)
    assert [(m["version"], m["role"], m["registered_by"]) for m in as_json["models"]] == [
        (b, "retired", "anna"),
        (a, "serving", registry.MODEL_PATH_BY),
    ]
    assert as_json["models"][1]["file"] == f"{a}.pt"
    assert [(c["action"], c["version"], c["by"]) for c in as_json["changes"]] == [
        ("rollback", a, "carl"),
        ("promote", b, "ben"),
        ("first", a, registry.MODEL_PATH_BY),
    ]


def test_rollback_goes_back_one_promotion_at_a_time(settings, tiny_model, other_models):
    a = tiny_model.version
    (b_path, b), (c_path, c) = other_models
    for path, version in ((b_path, b), (c_path, c)):
        registry.register(settings, path, "anna")
        registry.promote(settings, version, "anna", force_reason=PAST_THE_GATE[-1])

    served = [registry.rollback(settings, "ben").entry.version for _ in range(2)]

    assert served == [b, a]
    with pytest.raises(UserError, match="nothing to roll back to"):
        registry.rollback(settings, "ben")
    # Promoting a retired model again is a promotion like any other; rollback undoes it.
    registry.promote(settings, c, "carl", force_reason=PAST_THE_GATE[-1])
    assert registry.rollback(settings, "carl").entry.version == a


def test_every_promotion_goes_through_the_gate_and_a_rollback_does_not(
    settings, tiny_model, other_models
):
    a = tiny_model.version
    (b_path, b), _ = other_models
    registry.register(settings, b_path, "anna")

    # Called directly, not through the command line: the gate still judges, and refuses a
    # candidate no person has labelled a photo for.
    with pytest.raises(registry.GateRefused, match="too few blind labels") as refused:
        registry.promote(settings, b, "anna")
    assert not refused.value.decision.passed
    assert registry.ensure_serving_model(settings).version == a

    forced = registry.promote(settings, b, "anna", force_reason=" peak season ")
    assert forced.change.reason == "peak season"
    assert registry.rollback(settings, "ben").entry.version == a  # not gated


def test_one_candidate_at_a_time(settings, other_models):
    (b_path, b), (c_path, c) = other_models
    assert model_cli("register", b_path, "--by", "anna").exit_code == 0

    refused = model_cli("register", c_path, "--by", "ben")

    assert refused.exit_code == 1
    assert f"error: model {b} is the candidate (registered " in refused.output
    assert "register this one with --replace, which retires it" in refused.output
    assert c not in entries(settings)
    result = model_cli("register", c_path, "--by", "ben", "--replace")
    assert result.exit_code == 0, result.output
    assert f"model {b} is no longer the candidate: retired" in result.output
    known = entries(settings)
    assert (known[b].role, known[b].retired_by, known[c].role) == ("retired", "ben", "candidate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "{b}"], "error: give --by NAME: the model registry records who does this"),
        (["register", "{b}", "--by", " "], "error: --by: give a name of 1 to 128 characters"),
        (["register", "{text}", "--by", "anna"], "is not a refund-sorter checkpoint"),
        (["register", "{missing}", "--by", "anna"], "error: model file not found"),
        (["promote", "0123456789ab", "--by", "anna"], "error: unknown model version"),
        (["promote", "{a}"], "error: give --by NAME"),
        (["rollback"], "error: give --by NAME"),
        (["rollback", "--by", "anna"], "error: nothing to roll back to"),
    ],
)
def test_plain_errors_change_nothing(
    args, message, make_settings, use_settings, tmp_path, tiny_model, other_models
):
    settings = make_settings()
    use_settings(settings)
    upgrade(settings.database_url)
    registry.ensure_serving_model(settings)
    (tmp_path / "notes.pt").write_text("a shopping list, not a model\n")
    names = {
        "a": tiny_model.version,
        "b": other_models[0][0],
        "text": tmp_path / "notes.pt",
        "missing": tmp_path / "gone.pt",
    }

    result = model_cli(*(arg.format(**names) for arg in args))

    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert list(entries(settings)) == [tiny_model.version]
    assert len(changes(settings)) == 1
    assert stored_models(settings) == [f"{tiny_model.version}.pt"]


def test_a_database_not_migrated_is_a_plain_error(make_settings, use_settings):
    use_settings(make_settings())

    result = model_cli("list")

    assert result.exit_code == 1
    assert "run `refund-sorter db upgrade` first" in result.output


def test_the_registry_wins_over_a_model_path_that_disagrees(
    settings, tiny_model, other_models, use_settings, caplog
):
    (b_path, b), _ = other_models
    local_night(settings, seed=56)
    # The old way of changing the model: another file at REFUND_SORTER_MODEL_PATH.
    moved = settings.model_copy(update={"model_path": b_path})
    use_settings(moved)

    rows = local_night(moved, seed=57)

    assert {p.model_version for p in rows} == {tiny_model.version}
    note = (
        f"the file at REFUND_SORTER_MODEL_PATH ({b_path}) is model {b}, not the serving model "
        f"{tiny_model.version}: the registry decides which model serves"
    )
    assert note in caplog.text
    listing = model_cli("list")
    assert f"note: {note}" in listing.output
    assert b not in entries(settings)


# --------------------------------------------------------------------------------- upgrade

OLD = "0ld0ld0ld0ld"  # a version whose file nobody kept


@pytest.mark.parametrize("db", DATABASES)
def test_an_upgrade_fills_the_registry_from_the_rows_and_loses_nothing(
    db, request, make_settings, use_settings, tiny_model
):
    url = request.getfixturevalue("make_pg_database")(migrate=False) if db == "postgresql" else None
    settings = make_settings(url)
    use_settings(settings)
    upgrade(settings.database_url, "0007")
    # Before the registry: two finished nights, the first by a model since replaced, and a
    # night of the old model still "running" (it stalled), one photo of it queued and still
    # in incoming/.
    stalled = Incoming(settings.incoming_dir)
    add_images(stalled, 1, seed=58)
    ((rel, queued_hash),) = stalled.images.items()
    long_ago = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    run_ids = []
    with session_factory(settings.database_url).begin() as session:
        for night, version in enumerate((OLD, tiny_model.version, OLD)):
            last = night == 2
            at = long_ago + timedelta(days=night)
            # In SQL: the model's sweep_runs has columns this revision lacks (known).
            run_id = session.execute(
                text(
                    'INSERT INTO sweep_runs (status, "trigger", model_version, started_at,'
                    " updated_at, found, enqueued, succeeded, failed, skipped, pending, deferred)"
                    " VALUES (:status, 'beat', :version, :at, :at, 0, 1, 0, 0, 0, :pending, 0)"
                    " RETURNING id"
                ).bindparams(bindparam("at", type_=DateTime(timezone=True))),
                {
                    "status": SweepStatus.RUNNING if last else SweepStatus.FINISHED,
                    "version": version,
                    "at": at,
                    "pending": 1 if last else 0,
                },
            ).scalar_one()
            run_ids.append(run_id)
            session.add(
                Prediction(
                    content_hash=queued_hash if last else f"{night:064d}",
                    model_version=version,
                    sweep_run_id=run_id,
                    status=ItemStatus.QUEUED if last else ItemStatus.OK,
                    file_name=rel.name,
                    original_path=str(settings.incoming_dir / rel),
                    created_at=at,
                )
            )
    rows_before = len(all_predictions(settings))

    upgrade(settings.database_url)

    known = entries(settings)
    assert set(known) == {OLD, tiny_model.version}
    for version, first_seen in ((OLD, long_ago), (tiny_model.version, long_ago + timedelta(1))):
        entry = known[version]
        assert (entry.role, entry.file_name, entry.registered_by) == ("retired", None, "db upgrade")
        assert crud.as_utc(entry.registered_at) == first_seen
    # The stall check: no worker can load the old model, so its night is released at once
    # rather than after the stale delay.
    assert resume_stalled_sweep(settings, dispatch=pytest.fail, queue_depth=lambda: 0) is None
    run = get_run(settings, run_ids[2])
    assert run.status == SweepStatus.ABANDONED
    assert f"its model {OLD} has no file in the model store" in run.message

    # The first sweep after the upgrade: the file at REFUND_SORTER_MODEL_PATH (the last
    # night's model) serves, and the photo queued for the old model is taken over, not
    # classified twice.
    result = CliRunner().invoke(main, ["sweep", "--local"])

    assert result.exit_code == 0, result.output
    serving = entries(settings)[tiny_model.version]
    assert serving.role == "serving" and serving.file_name == f"{tiny_model.version}.pt"
    assert changes(settings) == [("first", tiny_model.version, OLD, registry.MODEL_PATH_BY)]
    rows = all_predictions(settings)
    assert len(rows) == rows_before
    taken = next(p for p in rows if p.content_hash == queued_hash)
    assert (taken.status, taken.model_version) == (ItemStatus.OK, tiny_model.version)
    assert not any(p.status == ItemStatus.QUEUED for p in rows)
    listing = model_cli("list")
    assert any(
        line.startswith(OLD) and "retired (no file)" in line for line in listing.output.splitlines()
    )
    refused = model_cli("promote", OLD, "--by", "anna")
    assert refused.exit_code == 1
    assert f"model {OLD} has no file in the model store" in refused.output


# ------------------------------------------------------------------ workers and the sweeps


@pytest.fixture
def worker_settings(fresh_pg_url, broker_url, producer_app, make_settings, use_settings):
    settings = make_settings(
        fresh_pg_url, broker_url=broker_url, batch_size=4, batch_max_wait=0.5, torch_threads=1
    )
    use_settings(settings)
    return settings


def night_rows(settings, run_id: int) -> list[Prediction]:
    return [p for p in all_predictions(settings) if p.sweep_run_id == run_id]


@pytest.mark.services
def test_a_running_worker_switches_to_a_promoted_model_without_a_restart(
    worker_settings, start_worker, tiny_model, other_models
):
    settings = worker_settings
    a = tiny_model.version
    (b_path, b), _ = other_models
    worker = start_worker(settings)
    incoming = Incoming(settings.incoming_dir)

    def night(seed: int) -> list[Prediction]:
        add_images(incoming, 8, seed=seed)
        report = run_sweep(settings, dispatch=publish, trigger="manual")
        run = wait_for_run(settings, report.run.id, timeout=120, logs=[worker])
        rows = night_rows(settings, run.id)
        assert len(rows) == 8 and {p.status for p in rows} == {ItemStatus.OK}
        return rows

    assert {p.model_version for p in night(60)} == {a}
    assert model_cli("register", b_path, "--by", "anna").exit_code == 0
    assert model_cli("promote", b, "--by", "anna", *PAST_THE_GATE).exit_code == 0

    assert {p.model_version for p in night(61)} == {b}
    assert model_cli("rollback", "--by", "ben").exit_code == 0
    assert {p.model_version for p in night(62)} == {a}

    assert worker.proc.poll() is None  # the same worker process all along, never restarted
    log = worker.log()
    assert log.count(f"loaded model {b} ") == 1
    assert log.count(f"loaded model {a} ") == 1  # kept loaded while b served


@pytest.mark.services
def test_a_promotion_during_a_running_sweep_waits_for_it(
    worker_settings, start_worker, tiny_model, other_models, tmp_path
):
    settings = worker_settings
    a = tiny_model.version
    (b_path, b), _ = other_models
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 24, seed=63)
    # No worker yet: the night stays running, its photos queued.
    run = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert (run.status, run.enqueued, run.model_version) == ("running", 24, a)
    assert model_cli("register", b_path, "--by", "anna").exit_code == 0

    refused = model_cli("promote", b, "--by", "anna", *PAST_THE_GATE)

    assert refused.exit_code == 1
    assert (
        f"error: sweep {run.id} is running (started {crud.as_utc(run.started_at):%Y-%m-%d %H:%M} "
        f"UTC, model {a}): 0 of 24 photos classified, 24 to go."
    ) in refused.output
    assert "with --wait to wait for it" in refused.output
    assert entries(settings)[a].role == "serving"

    promoter = ServiceProcess(
        "promote",
        [
            sys.executable,
            "-c",
            "from cli import main; main()",
            "model",
            "promote",
            b,
            "--by",
            "anna",
            "--wait",
            "--timeout",
            "300",
            *PAST_THE_GATE,
        ],
        service_env(settings),
        tmp_path / "promote.log",
    )
    try:
        promoter.wait_for_log(
            f"waiting up to 300 s for the running sweep to finish: sweep {run.id}"
        )
        worker = start_worker(settings)
        done = wait_for_run(settings, run.id, timeout=180, logs=[worker])
        assert promoter.proc.wait(timeout=60) == 0, promoter.describe()
    finally:
        promoter.stop()

    # The night is one model's: every photo classified by a, none left queued.
    rows = night_rows(settings, run.id)
    assert len(rows) == 24
    assert {(p.status, p.model_version) for p in rows} == {(ItemStatus.OK, a)}
    assert "promoted after waiting " in promoter.log()
    assert f"model {b} serves in place of model {a}, by anna" in promoter.log()
    with session_factory(settings.database_url)() as session:
        promoted = crud.promotion_history(session, last=1)[0]
    assert (promoted.version, promoted.action) == (b, PromotionAction.PROMOTE)
    assert crud.as_utc(promoted.at) >= crud.as_utc(done.finished_at)
    # The next night is b's, served by the same worker.
    add_images(incoming, 8, seed=64)
    nxt = run_sweep(settings, dispatch=publish, trigger="manual").run
    wait_for_run(settings, nxt.id, timeout=120, logs=[worker])
    assert {(p.status, p.model_version) for p in night_rows(settings, nxt.id)} == {
        (ItemStatus.OK, b)
    }


@pytest.mark.services
def test_a_sweep_that_starts_during_a_promotion_waits_and_takes_the_new_model(
    fresh_pg_url, make_settings, tiny_model, other_models
):
    """The other order: the producer asks for the lock while a promotion holds it. Its
    insert waits on the unique index until the promotion commits, and only then does it
    read which model serves."""
    settings = make_settings(fresh_pg_url)
    (b_path, b), _ = other_models
    registry.ensure_serving_model(settings)
    registry.register(settings, b_path, "anna")
    add_images(Incoming(settings.incoming_dir), 5, seed=65)
    sessions = session_factory(settings.database_url)
    promotion = sessions()
    promotion.begin()
    lock = crud.take_sweep_lock(promotion)
    crud.make_serving(promotion, version=b, by="anna", action=PromotionAction.PROMOTE)
    items, reports = [], []
    producer = threading.Thread(
        target=lambda: reports.append(run_sweep(settings, dispatch=items.extend, trigger="manual"))
    )
    producer.start()
    try:
        # Until PostgreSQL shows the producer's insert waiting for the promotion's lock.
        deadline = time.monotonic() + 60
        with sessions() as watcher:
            while not watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ):
                assert time.monotonic() < deadline and producer.is_alive(), reports
                time.sleep(0.1)
                watcher.rollback()
        crud.release_sweep_lock(promotion, lock)
        promotion.commit()
    finally:
        promotion.close()
        producer.join(timeout=60)

    (report,) = reports
    assert (report.run.status, report.run.model_version) == ("running", b)
    assert len(items) == 5 and {it.model_version for it in items} == {b}
    with sessions() as session:
        assert (
            session.scalar(text("SELECT count(*) FROM sweep_runs WHERE trigger = 'promotion'")) == 0
        )


@pytest.mark.services
def test_a_model_file_replaced_mid_night_strands_no_photo(
    worker_settings, start_worker, tiny_model, other_models, tmp_path
):
    """What used to leave most of a night queued: the file at REFUND_SORTER_MODEL_PATH
    replaced by another model while the night's photos wait, then a worker (re)started.
    The registry still serves the night's model, from the store, and the worker says that
    the file is not the serving model."""
    model_path = tmp_path / "model.pt"
    model_path.write_bytes(tiny_model.path.read_bytes())
    settings = worker_settings.model_copy(update={"model_path": model_path})
    (b_path, b), _ = other_models
    add_images(Incoming(settings.incoming_dir), 30, seed=66)
    run = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert (run.enqueued, run.model_version) == (30, tiny_model.version)
    model_path.write_bytes(b_path.read_bytes())  # the old way of deploying a model

    worker = start_worker(settings)
    done = wait_for_run(settings, run.id, timeout=180, logs=[worker])

    assert (done.status, done.succeeded, done.pending) == ("finished", 30, 0)
    rows = night_rows(settings, run.id)
    assert {(p.status, p.model_version) for p in rows} == {(ItemStatus.OK, tiny_model.version)}
    assert (
        f"the file at REFUND_SORTER_MODEL_PATH ({model_path}) is model {b}, not the serving "
        f"model {tiny_model.version}"
    ) in worker.log()
    assert b not in entries(settings)


def test_a_batch_is_classified_by_the_models_its_tasks_were_enqueued_for(
    settings, tiny_model, monkeypatch, caplog
):
    """In one worker process: each task's items go to the model they name, loaded from the
    store; items for a version the registry has no file for are left as they are."""
    from collections import OrderedDict
    from dataclasses import replace
    from types import SimpleNamespace

    import worker.tasks as tasks
    from refund_sorter.messages import task_args

    add_images(Incoming(settings.incoming_dir), 4, seed=67)
    items = []
    run = run_sweep(settings, dispatch=items.extend, trigger="manual").run
    stranger = [replace(it, model_version="0123456789ab") for it in items[:2]]
    monkeypatch.setattr(tasks.app, "settings", settings)
    monkeypatch.setattr(tasks.ClassifierTask, "_loaded", OrderedDict())
    monkeypatch.setattr(tasks, "report_to_flower", lambda *args: None)
    requests = [
        SimpleNamespace(id=f"task-{i}", args=task_args(part), hostname="w1@test")
        for i, part in enumerate((stranger, items))
    ]

    with caplog.at_level(logging.INFO, logger="worker.tasks"):
        tasks.classify.run(requests)

    assert list(tasks.ClassifierTask._loaded) == [tiny_model.version]
    assert get_run(settings, run.id).status == SweepStatus.FINISHED
    assert {(p.status, p.model_version) for p in night_rows(settings, run.id)} == {
        (ItemStatus.OK, tiny_model.version)
    }
    assert "left 2 images for model 0123456789ab as they are: model 0123456789ab is not " in (
        caplog.text
    )
    assert "batch of 6 images: 4 ok, 0 failed, 2 ignored, 0 refused" in caplog.text
