"""Which photos are flagged for review: below the threshold stored in the model, chosen on
held-out photos when it was trained, unless REFUND_SORTER_REVIEW_THRESHOLD says otherwise.
Through the batch function that the workers and local mode run, on SQLite."""

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
)

from cli import main
from refund_sorter.db import upgrade


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
