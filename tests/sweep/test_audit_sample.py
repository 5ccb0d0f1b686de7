"""The blind audit sample: which confident photos are drawn, and what a sweep records of it
(the draw, the rate and threshold in force, the margin between the two best sub categories)."""

from hashlib import sha256

import pytest
from click.testing import CliRunner
from sweep_support import Incoming, add_images, all_predictions, get_run, read_csv, sweep_csv

from cli import main
from refund_sorter.audit import audit_draw, is_audited, sub_margin
from refund_sorter.config import Settings


def test_the_draw_is_deterministic_and_near_the_rate():
    hashes = [sha256(str(i).encode()).hexdigest() for i in range(40_000)]
    drawn = [is_audited(h, "v1", "seed", 0.02, needs_review=False) for h in hashes]
    assert drawn == [is_audited(h, "v1", "seed", 0.02, needs_review=False) for h in hashes]
    # 800 expected; the binomial's standard deviation is 28.
    assert 800 - 4 * 28 < sum(drawn) < 800 + 4 * 28
    # Another seed or model version draws another sample; a flagged photo is never drawn.
    other = [is_audited(h, "v1", "other", 0.02, needs_review=False) for h in hashes]
    assert other != drawn
    assert audit_draw(hashes[0], "v2", "seed") != audit_draw(hashes[0], "v1", "seed")
    assert not any(is_audited(h, "v1", "seed", 1.0, needs_review=True) for h in hashes[:100])
    assert all(is_audited(h, "v1", "seed", 1.0, needs_review=False) for h in hashes[:100])
    assert not any(is_audited(h, "v1", "seed", 0.0, needs_review=False) for h in hashes[:100])


def test_the_margin_is_the_gap_between_the_two_best():
    assert sub_margin((("tops", "shirt", 0.5), ("tops", "t-shirt", 0.3))) == pytest.approx(0.2)
    assert sub_margin((("tops", "shirt", 0.9),)) == pytest.approx(0.9)
    assert sub_margin(()) is None


def test_the_audit_seed_takes_text_or_a_number(monkeypatch):
    monkeypatch.setenv("REFUND_SORTER_AUDIT_SEED", "42")
    assert Settings().audit_seed == "42"
    assert Settings(audit_seed=42).audit_seed == "42"
    assert Settings().audit_rate == 0.02


@pytest.mark.model
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_a_local_sweep_records_the_audit(db, request, make_settings, use_settings, tiny_model):
    url = request.getfixturevalue("fresh_pg_url") if db == "postgresql" else None
    settings = make_settings(url, audit_rate=0.5, audit_seed="night-seed")
    use_settings(settings)
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    add_images(Incoming(settings.incoming_dir), 40, seed=5)

    result = runner.invoke(main, ["sweep", "--local"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    rows = all_predictions(settings)
    assert len(rows) == 40
    for p in rows:
        assert p.audited == is_audited(
            p.content_hash, p.model_version, "night-seed", 0.5, needs_review=p.needs_review
        )
        assert p.audit_rate == 0.5
        assert p.review_threshold == pytest.approx(tiny_model.review_threshold)
        assert p.needs_review == (p.sub_confidence < p.review_threshold)
        top = p.top_subs
        assert p.sub_margin == pytest.approx(top[0]["p"] - top[1]["p"], abs=2e-4)
    audited = [p for p in rows if p.audited]
    assert audited and not any(p.needs_review for p in audited)
    confident = [p for p in rows if not p.needs_review]
    assert len(audited) < len(confident) or len(confident) < 4

    by_hash = {
        line["content_hash"]: line
        for line in read_csv(sweep_csv(settings, get_run(settings, rows[0].sweep_run_id)))
    }
    for p in rows:
        line = by_hash[p.content_hash]
        assert line["audited"] == ("true" if p.audited else "false")
        assert float(line["audit_rate"]) == 0.5
        assert float(line["review_threshold"]) == pytest.approx(p.review_threshold, abs=1e-4)
