"""Which photos are flagged for review: below the threshold in force for the model version
(REFUND_SORTER_REVIEW_THRESHOLD when set; else the one `refund-sorter threshold --set` set for
that version; else the one stored in the model, chosen on held-out photos when it was
trained). Through the batch function that the workers and local mode run."""

import dataclasses

import pytest
from click.testing import CliRunner
from sweep_support import (
    Incoming,
    TinyModel,
    add_images,
    all_predictions,
    check_finished_sweep,
    local_sweep,
    save_random_model,
    wait_for_run,
)

from cli import main
from refund_sorter import crud
from refund_sorter.db import session_factory, upgrade

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def chosen(tmp_path_factory, tiny_model: TinyModel) -> TinyModel:
    """The tiny model's weights with a threshold of its own stored in the checkpoint: the
    median confidence on photos like the tests', so both outcomes occur."""
    path = tmp_path_factory.mktemp("chosen") / "chosen.pt"
    version, _ = save_random_model(path, review_threshold=tiny_model.review_threshold)
    return dataclasses.replace(tiny_model, path=path, version=version)


def ok_rows(settings):
    rows = [p for p in all_predictions(settings) if p.status == "ok"]
    assert rows
    return rows


def test_a_local_sweep_without_the_setting_uses_the_models_threshold(
    make_settings, use_settings, chosen
):
    settings = make_settings(model_path=chosen.path, review_threshold=None)
    use_settings(settings)
    upgrade(settings.database_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 30, seed=41)

    result = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    run_id = all_predictions(settings)[0].sweep_run_id
    rows = check_finished_sweep(settings, run_id, incoming, chosen.taxonomy)
    assert {p.needs_review for p in rows} == {True, False}
    assert all(p.needs_review == (p.sub_confidence < chosen.review_threshold) for p in rows)


@pytest.mark.parametrize(("setting", "flagged"), [(0.0, False), (1.0, True)])
def test_the_setting_overrides_the_models_threshold(
    make_settings, chosen, classifier_for, setting, flagged
):
    settings = make_settings(model_path=chosen.path, review_threshold=setting)
    upgrade(settings.database_url)
    add_images(Incoming(settings.incoming_dir), 12, seed=42)

    local_sweep(settings, classifier_for(chosen, setting))

    assert [p.needs_review for p in ok_rows(settings)] == [flagged] * 12


def test_a_model_without_a_threshold_of_its_own_uses_the_old_default(
    make_settings, tiny_model, classifier_for
):
    settings = make_settings(review_threshold=None)
    upgrade(settings.database_url)
    add_images(Incoming(settings.incoming_dir), 12, seed=43)

    local_sweep(settings, classifier_for(tiny_model))

    assert all(p.needs_review == (p.sub_confidence < 0.6) for p in ok_rows(settings))


@pytest.fixture(scope="module")
def classifier_for():
    from classifier.predict import Classifier

    loaded = {}

    def load(model: TinyModel, setting: float | None = None):
        """The model, loaded with REFUND_SORTER_REVIEW_THRESHOLD=``setting`` (None: unset)."""
        if (model.path, setting) not in loaded:
            loaded[model.path, setting] = Classifier.from_path(model.path, "cpu", "auto", setting)
        return loaded[model.path, setting]

    return load


def sweep_rows(settings, seed: int) -> list:
    """``sweep --local`` over 12 new photos, as an operator runs it: the rows it stored."""
    before = {p.id for p in all_predictions(settings)}
    add_images(Incoming(settings.incoming_dir), 12, seed=seed)
    result = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [p for p in ok_rows(settings) if p.id not in before]
    assert len(rows) == 12
    return rows


def threshold_cli(*args: str):
    return CliRunner().invoke(main, ["threshold", *args], catch_exceptions=False)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_a_threshold_set_for_one_model_version_is_not_inherited_by_another(
    db, request, make_settings, use_settings, chosen, tiny_model
):
    url = request.getfixturevalue("fresh_pg_url") if db == "postgresql" else None
    settings = make_settings(url, model_path=chosen.path, review_threshold=None)
    use_settings(settings)
    upgrade(settings.database_url)

    result = threshold_cli("--set", "0", "--by", "anna")
    assert result.exit_code == 0, result.output
    assert (
        f"model {chosen.version}: review threshold set for it none (the model file's own "
        "applies) -> 0.00 (by anna on "
    ) in result.output
    rows = sweep_rows(settings, seed=44)
    assert not any(p.needs_review for p in rows)
    assert {p.review_threshold for p in rows} == {0.0}
    # The suggestion says which threshold is in force, and why.
    suggestion = threshold_cli("--target", "0.9")
    assert "in force 0.00, set for this model (by anna on " in suggestion.output

    # Another model serves, the same database: its own threshold, not the one set for the
    # first. (Random weights, nothing labelled: promoted past the gate.)
    promote = ["promote", tiny_model.version, "--force", "--reason", "random weights"]
    for args in (["register", str(tiny_model.path)], promote):
        result = CliRunner().invoke(main, ["model", *args, "--by", "anna"])
        assert result.exit_code == 0, result.output
    rows = sweep_rows(settings, seed=45)
    assert {p.model_version for p in rows} == {tiny_model.version}
    assert all(p.needs_review == (p.sub_confidence < 0.6) for p in rows)
    assert {p.review_threshold for p in rows} == {0.6}
    suggestion = threshold_cli("--target", "0.9")
    assert "in force 0.60, stored in the model file" in suggestion.output

    # The first model's value is still there, and may be cleared by its version.
    with session_factory(settings.database_url)() as session:
        kept = crud.review_threshold_set(session, model_version=chosen.version)
        assert (kept.threshold, kept.set_by) == (0.0, "anna")
        assert crud.review_threshold_set(session, model_version=tiny_model.version) is None
    result = threshold_cli("--clear", "--model-version", chosen.version, "--by", "ben")
    assert result.exit_code == 0, result.output
    assert "0.00 (by anna on " in result.output
    assert result.output.split("\n")[0].endswith("-> none (the model file's own applies)")
    with session_factory(settings.database_url)() as session:
        assert crud.review_threshold_set(session, model_version=chosen.version) is None


@pytest.mark.services
def test_a_running_worker_takes_up_a_threshold_set_meanwhile(
    fresh_pg_url, broker_url, producer_app, make_settings, use_settings, chosen, start_worker
):
    from producer.sweep import run_sweep
    from refund_sorter.celery_app import publish

    settings = make_settings(
        fresh_pg_url,
        model_path=chosen.path,
        review_threshold=None,
        broker_url=broker_url,
        batch_size=4,
        batch_max_wait=0.5,
        torch_threads=1,
    )
    use_settings(settings)
    worker = start_worker(settings)
    incoming = Incoming(settings.incoming_dir)

    def night(seed: int) -> list:
        add_images(incoming, 8, seed=seed)
        report = run_sweep(settings, dispatch=publish, trigger="manual")
        run = wait_for_run(settings, report.run.id, timeout=120, logs=[worker])
        return [p for p in ok_rows(settings) if p.sweep_run_id == run.id]

    first = night(49)
    assert all(p.needs_review == (p.sub_confidence < chosen.review_threshold) for p in first)
    assert threshold_cli("--set", "1", "--by", "anna").exit_code == 0
    second = night(50)

    assert len(second) == 8 and all(p.needs_review for p in second)
    assert {p.review_threshold for p in second} == {1.0}
    assert worker.proc.poll() is None  # the same worker, not restarted
    assert f"review threshold for model {chosen.version}: 1.0, set for this model" in worker.log()


@pytest.mark.services
def test_a_threshold_set_or_cleared_applies_from_the_next_batch(
    fresh_pg_url, make_settings, use_settings, chosen, classifier_for
):
    """The same loaded model (a worker that is not restarted), on PostgreSQL."""
    settings = make_settings(fresh_pg_url, model_path=chosen.path, review_threshold=None)
    use_settings(settings)
    clf = classifier_for(chosen)
    incoming = Incoming(settings.incoming_dir)

    assert threshold_cli("--set", "1").exit_code == 0
    add_images(incoming, 12, seed=46)
    local_sweep(settings, clf)
    assert [p.needs_review for p in ok_rows(settings)] == [True] * 12

    assert threshold_cli("--clear").exit_code == 0
    add_images(incoming, 12, seed=47)
    run = local_sweep(settings, clf)
    rows = [p for p in ok_rows(settings) if p.sweep_run_id == run.id]
    assert len(rows) == 12
    assert all(p.needs_review == (p.sub_confidence < chosen.review_threshold) for p in rows)
    assert all(p.review_threshold == pytest.approx(chosen.review_threshold) for p in rows)


def test_the_setting_overrides_a_threshold_set_for_the_model(
    make_settings, use_settings, chosen, classifier_for
):
    settings = make_settings(model_path=chosen.path, review_threshold=1.0)
    use_settings(settings)
    upgrade(settings.database_url)

    result = threshold_cli("--set", "0")
    assert result.exit_code == 0
    assert "REFUND_SORTER_REVIEW_THRESHOLD=1.0 is set and overrides it for every model" in (
        result.output
    )
    add_images(Incoming(settings.incoming_dir), 12, seed=48)
    local_sweep(settings, classifier_for(chosen))

    assert [p.needs_review for p in ok_rows(settings)] == [True] * 12
    assert {p.review_threshold for p in ok_rows(settings)} == {1.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "1.5"], "1.5 is not in the range 0<=x<=1"),
        (["--set", "high"], "'high' is not a valid float"),
        (["--set", "0.5", "--clear"], "give --set or --clear, not both"),
        (["--set", "0.5", "--model-version", "0123456789ab"], "unknown model version"),
        (["--model-version", "0123456789ab"], "--model-version and --by go with --set"),
        (["--set", "0.5", "--by", " "], "--by: give a name of 1 to 128 characters"),
    ],
)
def test_plain_errors(make_settings, use_settings, args, message):
    settings = make_settings(review_threshold=None)
    use_settings(settings)
    upgrade(settings.database_url)

    result = threshold_cli(*args)

    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    with session_factory(settings.database_url)() as session:
        assert crud.review_threshold_set(session, model_version="0123456789ab") is None


def test_without_a_model_file_a_version_must_be_named(make_settings, use_settings, tmp_path):
    settings = make_settings(model_path=tmp_path / "missing.pt", review_threshold=None)
    use_settings(settings)
    upgrade(settings.database_url)

    result = threshold_cli("--set", "0.5")

    assert result.exit_code == 1
    assert "model file not found" in result.output
