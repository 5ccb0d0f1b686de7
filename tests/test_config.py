"""Settings: one object, REFUND_SORTER_* variables, embedded defaults derived from home."""

from pathlib import Path

from click.testing import CliRunner

from cli import main
from refund_sorter.config import Settings, get_settings


def test_defaults_are_the_embedded_setup(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    s = Settings()
    assert s.database_url == "sqlite:///var/refund-sorter.db"
    assert (s.incoming_dir, s.processed_dir, s.failed_dir, s.export_dir) == (
        Path("var/incoming"),
        Path("var/processed"),
        Path("var/failed"),
        Path("var/exports"),
    )
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert (s.sweep_cron, s.timezone, s.device) == ("0 2 * * *", "UTC", "auto")


def test_environment_overrides_and_home_moves_the_rest(monkeypatch, tmp_path):
    monkeypatch.setenv("REFUND_SORTER_HOME", str(tmp_path))
    monkeypatch.setenv("REFUND_SORTER_FAILED_DIR", "/srv/returns/bad")
    monkeypatch.setenv("REFUND_SORTER_BATCH_SIZE", "128")
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'refund-sorter.db'}"
    assert s.incoming_dir == tmp_path / "incoming"
    assert s.failed_dir == Path("/srv/returns/bad")
    assert s.batch_size == 128


def runs_with_fresh_settings():
    """``refund-sorter runs`` reading the settings from the environment as it is now."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, ["runs"])
    finally:
        get_settings.cache_clear()


def test_a_bad_setting_is_a_plain_error(monkeypatch):
    monkeypatch.setenv("REFUND_SORTER_BATCH_SIZE", "lots")
    monkeypatch.setenv("REFUND_SORTER_REVIEW_THRESHOLD", "2")
    result = runs_with_fresh_settings()
    assert result.exit_code == 1
    assert "error: invalid setting: REFUND_SORTER_BATCH_SIZE" in result.output
    assert "REFUND_SORTER_REVIEW_THRESHOLD" in result.output
    assert "Traceback" not in result.output


def test_the_time_zone_must_be_one_zoneinfo_knows(monkeypatch):
    assert Settings(timezone="Europe/Berlin").timezone == "Europe/Berlin"
    for wrong in ("Mars/Olympus_Mons", "CEST", "../etc/passwd"):
        monkeypatch.setenv("REFUND_SORTER_TIMEZONE", wrong)
        result = runs_with_fresh_settings()
        assert result.exit_code == 1, wrong
        assert "REFUND_SORTER_TIMEZONE" in result.output
        assert "is not a time zone this machine knows: use an IANA name such as" in result.output
        assert "Traceback" not in result.output


def test_the_review_desks_claims_and_proxy_settings(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    s = Settings()
    assert (s.review_claim_seconds, s.review_trust_proxy) == (300, False)
    monkeypatch.setenv("REFUND_SORTER_REVIEW_CLAIM_SECONDS", "0")
    result = runs_with_fresh_settings()
    assert result.exit_code == 1
    assert "REFUND_SORTER_REVIEW_CLAIM_SECONDS" in result.output


def test_retries_double_and_the_visibility_timeout_must_outlast_the_longest(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    s = Settings()
    assert [s.retry_countdown(attempt) for attempt in range(s.retry_limit)] == [60, 120, 240, 480]
    assert s.visibility_timeout == 1200 >= 480 + s.batch_max_wait + 300
    assert (s.sweep_stall_seconds, s.sweep_stall_check_seconds) == (120, 60)

    # Longer retries need a longer visibility timeout, or Redis would hand a retry that a
    # worker holds until it is due to another worker meanwhile.
    monkeypatch.setenv("REFUND_SORTER_RETRY_DELAY", "300")  # the last countdown is 2,400 s
    result = runs_with_fresh_settings()
    assert result.exit_code == 1
    assert "REFUND_SORTER_VISIBILITY_TIMEOUT: Value error, must be at least 2702 s" in result.output
    monkeypatch.setenv("REFUND_SORTER_VISIBILITY_TIMEOUT", "2702")
    assert Settings().visibility_timeout == 2702


def test_pytorch_threads_share_the_cores_out_among_pool_processes(monkeypatch):
    from worker.pipeline import torch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [torch_threads(Settings(), n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert torch_threads(Settings(torch_threads=3), 2) == 3  # a set value wins


def test_a_batch_gathers_whole_tasks_of_up_to_32_images():
    # A CPU worker's default batch is one task; a GPU worker's 256 images are eight.
    assert [Settings(batch_size=n).tasks_per_batch for n in (1, 32, 33, 256)] == [1, 1, 2, 8]


def test_the_review_threshold_is_unset_unless_given(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    assert Settings().review_threshold is None  # each model's own threshold
    monkeypatch.setenv("REFUND_SORTER_REVIEW_THRESHOLD", "")  # compose's unset variable
    assert Settings().review_threshold is None
    monkeypatch.setenv("REFUND_SORTER_REVIEW_THRESHOLD", "0.75")
    assert Settings().review_threshold == 0.75
    monkeypatch.setenv("REFUND_SORTER_REVIEW_THRESHOLD", "0")
    assert Settings().review_threshold == 0.0


def test_the_drift_settings_and_their_bounds(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    s = Settings()
    assert (s.drift_psi_threshold, s.drift_p_value, s.drift_baseline_nights) == (0.2, 0.001, 28)
    for name, wrong in (("PSI_THRESHOLD", "0"), ("P_VALUE", "1"), ("BASELINE_NIGHTS", "0")):
        monkeypatch.setenv(f"REFUND_SORTER_DRIFT_{name}", wrong)
        result = runs_with_fresh_settings()
        assert result.exit_code == 1, name
        assert f"error: invalid setting: REFUND_SORTER_DRIFT_{name}" in result.output
        assert "Traceback" not in result.output
        monkeypatch.delenv(f"REFUND_SORTER_DRIFT_{name}")
