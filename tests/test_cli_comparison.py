"""cli/comparison.py: ``model compare`` and the gate in front of ``model promote``, on
PostgreSQL, with staged nights of the serving model's rows, the candidate's shadow rows and
people's reviews (tests/comparison_support.py)."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from comparison_support import JEANS, SHIRT, Photo, better_night, labelled, stage_night, worse_night
from model_support import save_scaled_model
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent / "sweep"))
from sweep_support import (
    TinyModel,
    build_settings,
    postgres_database,
    save_random_model,
    use_in_this_process,
)

from cli import main
from models import ModelPromotion, ModelVersion
from refund_sorter.config import GATE_MIN_LABELLED, get_settings
from refund_sorter.db import session_factory
from refund_sorter.stats import PAIRED_DIFFERENCE

pytestmark = [pytest.mark.services, pytest.mark.model]


def run(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def refused(result: Result) -> Result:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def learned_model(source: Path, path: Path, hashes: list[str]) -> str:
    """A copy of ``source`` whose checkpoint says it learned the photos of ``hashes``."""
    from classifier.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    checkpoint.meta = {**checkpoint.meta, "content_hashes": sorted(hashes)}
    return save_checkpoint(checkpoint, path)


def serving_version(settings) -> str:
    with session_factory(settings.database_url)() as session:
        return session.scalar(select(ModelVersion.version).where(ModelVersion.role == "serving"))


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A migrated PostgreSQL database, a serving model (the file at MODEL_PATH) and the
    settings of the CLI pointed at them."""
    path = tmp_path / "serving.pt"
    version, taxonomy = save_random_model(path, seed=1)
    with postgres_database() as url:
        settings = build_settings(tmp_path / "home", url, TinyModel(path, version, taxonomy, 0.5))
        use_in_this_process(settings, monkeypatch)
        yield settings
        get_settings.cache_clear()


def test_a_worse_candidate_is_refused_with_its_figures_forced_and_rolled_back(deployment, tmp_path):
    settings = deployment
    learned = [Photo(SHIRT, JEANS, JEANS, flagged=True) for _ in range(10)]
    candidate = learned_model(
        settings.model_path, tmp_path / "candidate.pt", [p.content_hash for p in learned]
    )
    ok("model", "register", tmp_path / "candidate.pt", "--by", "ann")
    serving = serving_version(settings)
    assert serving and serving != candidate
    # 120 labelled photos: the serving model right on all, the candidate wrong on 30. The 10
    # photos it learned, where it alone is right, would hide that; they are left out.
    stage_night(settings, serving=serving, candidate=candidate, photos=worse_night() + learned)

    table = ok("model", "compare").output
    assert f"candidate {candidate}" in table and f"serving model {serving}" in table
    assert "live: 1 night since it was registered: 320 photos" in table
    assert "120 labelled with both answers" in table
    assert "left out, learned by the candidate: 10 photos (10 shadowed, 10 labelled)" in table
    assert "  sub: 30 photos only the serving model had right, 0 only the candidate" in table
    # The 30 are among the 100 flagged photos of 320: 9.4 points over the night.
    assert "live sub: serving - candidate accuracy +9.4 points, one-sided 95% upper" in table
    assert "margin 1.0 points (on 120 labelled photos)" in table
    assert "blind labels of unflagged photos (decided audits): 20" in table
    assert "  live: the difference rests on 69% blind labels, 31% labels given" in table
    assert "would refuse" in table and "too few blind labels to judge: 20 unflagged" in table

    figures = json.loads(ok("model", "compare", "--json").stdout)
    live = figures["live"]
    assert live["candidate"] == candidate and live["serving"] == serving
    assert live["labelled"] == 120 and live["nights"] == 1
    assert live["left_out"] == {"photos": 10, "shadowed": 10, "labelled": 10}
    assert live["photos"] == 320 and live["shadowed"] == 140
    for level in ("main", "sub"):
        paired = live[level]
        assert (paired["serving_only"], paired["candidate_only"]) == (30, 0)
        assert paired["difference"]["value"] == pytest.approx(100 / 320 * 30 / 100)
        assert paired["candidate"]["value"] < paired["serving"]["value"] == 1.0
        assert paired["difference"]["method"] == PAIRED_DIFFERENCE
    # Agreement: 90 of the 120 photos shadowed for certain agree, and 20 of 20 drawn at 10%:
    # (90 + 20 / 0.1) / (120 + 20 / 0.1).
    assert live["agreement_sub"]["value"] == pytest.approx(290 / 320)
    assert live["agreement_sub"]["method"] == "hajek"
    assert live["flagged_serving"]["value"] == pytest.approx(100 / 320)
    assert (live["serving_seconds"], live["candidate_seconds"]) == (0.01, 0.02)
    assert figures["gate"]["passed"] is False

    before = serving_version(settings)
    result = refused(run("model", "promote", candidate, "--by", "ben"))
    assert (
        "gate (REFUND_SORTER_GATE_MARGIN=0.01, "
        f"REFUND_SORTER_GATE_MIN_LABELLED={GATE_MIN_LABELLED}): refuses:" in result.output
    )
    assert "30 photos only the serving model had right, 0 only the candidate" in result.output
    assert f"error: model {candidate} is not promoted: the gate refuses it" in result.output
    assert serving_version(settings) == before

    assert (
        "--force needs --reason"
        in refused(run("model", "promote", candidate, "--by", "ben", "--force")).output
    )
    assert (
        "--reason goes with --force"
        in refused(run("model", "promote", candidate, "--by", "ben", "--reason", "why not")).output
    )

    reason = "peak season: the serving model misses the new coats"
    result = ok("model", "promote", candidate, "--by", "ben", "--force", "--reason", reason)
    assert "refuses:" in result.output
    assert serving_version(settings) == candidate
    with session_factory(settings.database_url)() as session:
        assert session.get(ModelVersion, candidate).reason == reason
        change = session.scalars(select(ModelPromotion).order_by(ModelPromotion.id.desc())).first()
        assert (change.version, change.replaced, change.by, change.reason) == (
            candidate,
            serving,
            "ben",
            reason,
        )
    assert reason in ok("model", "list").output

    ok("model", "rollback", "--by", "ben")
    assert serving_version(settings) == serving


def test_a_better_candidate_passes_the_gate_and_serves(deployment, tmp_path, monkeypatch):
    settings = deployment
    # Its 40 audits are the minimum here: the default asks for thousands.
    monkeypatch.setenv("REFUND_SORTER_GATE_MIN_LABELLED", "40")
    get_settings.cache_clear()
    candidate = save_scaled_model(settings.model_path, tmp_path / "better.pt", 2.0)
    ok("model", "register", tmp_path / "better.pt", "--by", "ann")
    serving = serving_version(settings)
    stage_night(settings, serving=serving, candidate=candidate, photos=better_night())

    result = ok("model", "promote", candidate, "--by", "ben")

    assert "passes, judged on live" in result.output
    assert "30 only the candidate" in result.output
    assert "  live: the difference rests on " in result.output
    assert serving_version(settings) == candidate
    with session_factory(settings.database_url)() as session:
        assert session.get(ModelVersion, candidate).reason is None


def test_too_few_labelled_photos_refuse_unless_a_folder_has_enough(
    deployment, tmp_path, monkeypatch, make_dataset
):
    settings = deployment
    monkeypatch.setenv("REFUND_SORTER_GATE_MIN_LABELLED", "40")
    # 42 photos bound an equal model's shortfall to under 7 points, not 1.
    monkeypatch.setenv("REFUND_SORTER_GATE_MARGIN", "0.1")
    get_settings.cache_clear()
    # The same network with every logit doubled: the same answers, another version.
    candidate = save_scaled_model(settings.model_path, tmp_path / "same.pt", 2.0)
    ok("model", "register", tmp_path / "same.pt", "--by", "ann")
    serving = serving_version(settings)
    stage_night(
        settings,
        serving=serving,
        candidate=candidate,
        photos=labelled(12, serving=SHIRT, candidate=SHIRT, truth=SHIRT),
    )

    result = refused(run("model", "promote", candidate, "--by", "ben"))
    assert (
        "too few blind labels to judge: 0 unflagged photos labelled blind (decided audits) in "
        "1 night, 40 needed (REFUND_SORTER_GATE_MIN_LABELLED): no decided audit yet"
    ) in result.output

    data = make_dataset(
        tmp_path / "data", {"tops/shirt": 12, "bottoms/jeans": 12, "tops/sweater": 12}, seed=4
    )
    make_dataset(data, {"bottoms/skirt": 6}, seed=5)
    figures = json.loads(ok("model", "compare", "--data", data, "--json").stdout)
    folder = figures["folder"]
    assert folder["photos"] == 42 and folder["left_out_training"] == 0
    assert folder["agreement_sub"]["value"] == 1.0
    assert folder["sub"]["difference"]["value"] == 0.0
    assert folder["sub"]["difference"]["upper"] < 0.1
    assert folder["serving_images_per_second"] > 0 < folder["candidate_images_per_second"]
    assert folder["serving_threshold"] == folder["candidate_threshold"] == 0.5
    assert figures["gate"]["judged_on"] == ["folder"]

    result = ok("model", "promote", candidate, "--by", "ben", "--data", data)
    assert f"folder {data}: 42 photos" in result.output
    assert (
        "sub: 0 photos only the serving model had right, 0 only the candidate (exact McNemar "
        "test: p = 1 two-sided, 1 that the candidate is no better)"
    ) in result.output
    assert "passes, judged on folder" in result.output
    assert "  folder: the difference rests on 100% the labelled folder" in result.output
    assert serving_version(settings) == candidate


def test_plain_errors_without_a_candidate_or_anything_to_compare(deployment, tmp_path):
    settings = deployment
    result = refused(run("model", "compare"))
    assert "error: no candidate is registered" in result.output

    save_scaled_model(settings.model_path, tmp_path / "new.pt", 3.0)
    ok("model", "register", tmp_path / "new.pt", "--by", "ann")
    result = refused(run("model", "compare"))
    assert "error: too few photos to compare" in result.output

    empty = tmp_path / "empty"
    (empty / "shoes" / "boots").mkdir(parents=True)
    (empty / "shoes" / "boots" / "notes.jpg").write_text("not a photo")
    result = refused(run("model", "compare", "--data", empty))
    assert "error: too few photos to compare in" in result.output


def test_no_serving_model_is_a_plain_error(deployment, tmp_path, monkeypatch):
    monkeypatch.setenv("REFUND_SORTER_MODEL_PATH", str(tmp_path / "missing.pt"))
    get_settings.cache_clear()
    result = refused(run("model", "compare"))
    assert "error: model file not found" in result.output
