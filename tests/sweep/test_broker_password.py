"""A broker or database that cannot be reached is named in the error, the stored sweep
message and ``refund-sorter runs``, always without its password."""

import logging

import pytest
from click.testing import CliRunner
from sweep_support import Incoming, add_images, all_runs

from cli import main
from refund_sorter import celery_app
from refund_sorter.db import upgrade

pytestmark = pytest.mark.model

SECRET = "s3cret-Pa55"


def test_an_unreachable_broker_is_named_without_its_password(
    make_settings, use_settings, monkeypatch, caplog
):
    # Port 1 is closed: publishing fails the way it does with Redis down or a wrong host.
    settings = make_settings(broker_url=f"redis://:{SECRET}@127.0.0.1:1/0")
    upgrade(settings.database_url)
    add_images(Incoming(settings.incoming_dir), 2, seed=3)
    use_settings(settings)
    app = celery_app.SorterCelery(settings, set_as_current=False)
    monkeypatch.setattr(celery_app, "app", app)
    caplog.set_level(logging.DEBUG)

    sweep = CliRunner().invoke(main, ["sweep"])
    runs = CliRunner().invoke(main, ["runs"])
    app.close()

    assert sweep.exit_code == 1
    assert "error: cannot reach the broker at redis://:***@127.0.0.1:1/0" in sweep.stderr
    (run,) = all_runs(settings)
    assert run.status == "abandoned"
    assert run.message.startswith("stopped early: cannot reach the broker at redis://:***@")
    assert runs.exit_code == 0 and "redis://:***@127.0.0.1:1/0" in runs.stdout
    for shown in (sweep.output, run.message, runs.output, caplog.text):
        assert SECRET not in shown


def test_an_unreachable_database_is_named_without_its_password(make_settings, use_settings):
    use_settings(make_settings(f"postgresql://refund:{SECRET}@127.0.0.1:1/refund_sorter"))

    result = CliRunner().invoke(main, ["runs"])

    assert result.exit_code == 1
    assert "cannot reach the database postgresql" in result.stderr
    assert "refund:***@127.0.0.1:1/refund_sorter" in result.stderr
    assert SECRET not in result.output
