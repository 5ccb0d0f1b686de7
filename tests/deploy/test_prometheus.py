"""deploy/prometheus/: the alert rules and the scrape configuration. Debian's promtool checks
both and runs the rules' unit tests (rules_test.yml), which must hold a firing and a silent
case for every alert; and a real Prometheus, with rules.yml loaded unchanged, scrapes
`refund-sorter metrics-server` over a staged bad night and raises the matching alert."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sweep_support import REPO_ROOT, ServiceProcess, free_port, service_env

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from registry.registry import serving_version

DEPLOY = REPO_ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "rules.yml"
RULE_TESTS = DEPLOY / "rules_test.yml"
CONFIG = DEPLOY / "prometheus.yml"
REFUND_SORTER = str(Path(sys.executable).parent / "refund-sorter")
SEVERITIES = {"critical", "warning"}
# The labels of the series the rules match on besides job and instance.
SERIES_LABELS = {
    "refund_sorter_queue_messages": {"queue", "state"},
    "refund_sorter_drift_score": {"level"},
    "refund_sorter_drift_threshold": {"level"},
    "refund_sorter_drift_p_value": {"level", "test"},
    "refund_sorter_drift_confidence_ks": {"level"},
    "refund_sorter_drift_confidence_ks_threshold": {"level"},
    "refund_sorter_drift_p_value_threshold": {"level"},
    "refund_sorter_audit_accuracy_target": {"level"},
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def untested(rules: dict, rule_tests: dict) -> dict[str, list[str]]:
    """The alerts of ``rules`` that ``rule_tests`` (promtool's format) never shows firing, or
    never shows silent, with what each lacks."""
    cases: dict[str, set[str]] = {rule["alert"]: set() for rule in alert_rules(rules)}
    for test in rule_tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            kind = "firing" if case.get("exp_alerts") else "silent"
            cases.setdefault(case["alertname"], set()).add(kind)
    return {
        name: sorted({"firing", "silent"} - kinds)
        for name, kinds in cases.items()
        if kinds != {"firing", "silent"}
    }


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed (Debian's prometheus package; bash tests/setup-machine.sh "
            "installs it)",
            pytrace=False,
        )
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [program("promtool"), *args],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ the files as written


def test_every_alert_says_what_happened_what_to_check_and_how_bad():
    rules = alert_rules(load(RULES))

    assert rules
    for rule in rules:
        name = rule["alert"]
        assert name.startswith("RefundSorter"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert "for" in rule, f"{name}: a `for:` rides out one odd scrape"
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        assert len(annotations["description"]) > 2 * len(annotations["summary"]), name
        assert "Check" in annotations["description"], f"{name}: what to check first"


def test_every_alert_has_a_firing_and_a_silent_case():
    rule_tests = load(RULE_TESTS)

    assert rule_tests["rule_files"] == ["rules.yml"]
    assert untested(load(RULES), rule_tests) == {}


def test_an_alert_without_a_silent_case_or_without_any_is_reported():
    rules = {"groups": [{"name": "g", "rules": [{"alert": "A"}, {"alert": "B"}, {"record": "r"}]}]}
    firing = {"alertname": "A", "eval_time": "1m", "exp_alerts": [{"exp_labels": {}}]}
    rule_tests = {"tests": [{"alert_rule_test": [firing]}]}

    assert untested(rules, rule_tests) == {"A": ["silent"], "B": ["firing", "silent"]}
    silent = {"alertname": "A", "eval_time": "2m"}  # no exp_alerts: promtool expects none
    rule_tests["tests"].append({"alert_rule_test": [silent]})
    assert untested(rules, rule_tests) == {"B": ["firing", "silent"]}


def test_the_scrape_configuration_scrapes_the_endpoint_and_loads_the_rules():
    config = load(CONFIG)

    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "refund-sorter"  # the rules select on it
    assert job["scrape_interval"] == "60s"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["metrics:9808"]}]


# ------------------------------------------------------------------------------ promtool


@pytest.mark.prometheus
def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules(load(RULES)))} rules found" in result.stdout


@pytest.mark.prometheus
def test_promtool_accepts_the_scrape_configuration():
    result = promtool("check", "config", str(CONFIG))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@pytest.mark.prometheus
def test_the_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# ------------------------------------------------------------------- a real Prometheus

OK_PHOTOS, FAILED_PHOTOS = 88, 12  # 12% failed, above the rule's 5%
PASSWORD = "s3cret-metrics"


def photo(run: SweepRun, i: int, *, failed: bool = False, flagged: bool = False) -> Prediction:
    name = f"night-{run.id}-{i:03d}.jpg"
    return Prediction(
        content_hash=f"{run.id:032x}{i:032x}",
        model_version=run.model_version,
        sweep_run_id=run.id,
        status=ItemStatus.FAILED if failed else ItemStatus.OK,
        file_name=name,
        original_path=f"/data/incoming/{name}",
        final_path=f"/data/{'failed' if failed else 'processed'}/{name}",
        main_category=None if failed else "tops",
        main_confidence=None if failed else 0.97,
        sub_category=None if failed else "shirt",
        sub_confidence=None if failed else 0.95,
        needs_review=flagged,
        error="cannot identify image file" if failed else None,
        classified_at=run.finished_at or run.started_at,
    )


def stage_nights(database_url: str, version: str) -> None:
    """The night before (50 photos, all classified), last night (88 classified, one of them
    flagged for review and never reviewed, and 12 failed) and a sweep running now, whose
    partial figures (all failed so far) must trip nothing."""
    now = datetime.now(UTC)
    nights = [  # started, finished, classified, flagged among them, failed
        (now - timedelta(hours=29), now - timedelta(hours=28), 50, 0, 0),
        (now - timedelta(hours=5), now - timedelta(hours=4), OK_PHOTOS, 1, FAILED_PHOTOS),
    ]
    with session_factory(database_url).begin() as session:
        for started, finished, ok, flagged, failed in nights:
            run = SweepRun(
                status=SweepStatus.FINISHED,
                trigger="beat",
                model_version=version,
                started_at=started,
                updated_at=finished,
                finished_at=finished,
                found=ok + failed,
                enqueued=ok + failed,
                succeeded=ok,
                failed=failed,
            )
            session.add(run)
            session.flush()
            session.add_all(
                photo(run, i, failed=i >= ok, flagged=i < flagged) for i in range(ok + failed)
            )
        running = SweepRun(
            status=SweepStatus.RUNNING,
            trigger="manual",
            model_version=version,
            started_at=now - timedelta(minutes=10),
            updated_at=now,
            found=20,
            enqueued=20,
            failed=5,
            pending=15,
        )
        session.add(running)
        session.flush()
        session.add_all(photo(running, i, failed=True) for i in range(5))


def get_json(url: str) -> dict | None:
    """The answer of Prometheus' HTTP API, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError):
        return None


def wait_until(ready, what: str, processes: list[ServiceProcess], timeout: float = 60):
    """Poll ``ready()`` until it returns something; fail with the processes' logs if one
    exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        exited = [p for p in processes if p.proc.poll() is not None]
        if exited or time.monotonic() > deadline:
            logs = "\n".join(p.describe() for p in processes)
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{logs}", pytrace=False)
        time.sleep(0.5)


def query(api: str, expression: str) -> float | None:
    answer = get_json(f"{api}/query?query={urllib.request.quote(expression)}")
    results = answer["data"]["result"] if answer else []
    return float(results[0]["value"][1]) if results else None


@pytest.mark.services
@pytest.mark.prometheus
def test_a_real_prometheus_with_the_shipped_rules_alerts_on_a_bad_night(
    fresh_pg_url, broker_url, tmp_path
):
    settings = Settings(
        home=tmp_path / "home",
        database_url=fresh_pg_url,
        broker_url=broker_url,
        model_path=REPO_ROOT / Settings.model_fields["model_path"].default,  # the shipped one
    )
    stage_nights(fresh_pg_url, serving_version(settings))
    metrics_port, prometheus_port = free_port(), free_port()
    target = f"127.0.0.1:{metrics_port}"
    # The endpoint asks for a password, given as prometheus.yml's comment says to.
    password = tmp_path / "metrics.password"
    password.write_text(PASSWORD)
    env = {**service_env(settings), "REFUND_SORTER_METRICS_BASIC_AUTH": f"prometheus:{PASSWORD}"}
    job = {
        "job_name": "refund-sorter",
        "static_configs": [{"targets": [target]}],
        "basic_auth": {"username": "prometheus", "password_file": str(password)},
    }
    # The shipped rules as they are; only the intervals are the test's, so that the first
    # evaluation comes within seconds rather than a minute.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [job],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    processes = []
    try:
        metrics = ServiceProcess(
            "metrics-server",
            [REFUND_SORTER, "metrics-server", "--address=127.0.0.1", f"--port={metrics_port}"],
            env,
            tmp_path / "metrics-server.log",
        )
        processes.append(metrics)
        metrics.wait_for_log("serving metrics on")
        prometheus = ServiceProcess(
            "prometheus",
            [
                program("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            {"PATH": "/usr/bin:/bin"},
            tmp_path / "prometheus.log",
        )
        processes.append(prometheus)
        api = f"http://127.0.0.1:{prometheus_port}/api/v1"

        # Every alert of rules.yml, as written, is what Prometheus evaluates.
        rules = wait_until(lambda: get_json(f"{api}/rules"), "Prometheus answering", processes)
        loaded = [rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]]
        assert loaded == [rule["alert"] for rule in alert_rules(load(RULES))]

        seen: set[str] = set()  # every alert pending or firing at any poll

        def failed_share_alert() -> dict | None:
            answer = get_json(f"{api}/alerts") or {"data": {"alerts": []}}
            alerts = {alert["labels"]["alertname"]: alert for alert in answer["data"]["alerts"]}
            seen.update(alerts)
            return alerts.get("RefundSorterFailedShareHigh")

        alert = wait_until(failed_share_alert, "RefundSorterFailedShareHigh", processes)

        assert alert["state"] in ("pending", "firing")
        assert alert["labels"] == {
            "alertname": "RefundSorterFailedShareHigh",
            "severity": "critical",
            "job": "refund-sorter",
            "instance": target,
        }
        # Last night's share, not the running sweep's (5 of 5 failed so far).
        assert float(alert["value"]) == pytest.approx(FAILED_PHOTOS / (OK_PHOTOS + FAILED_PHOTOS))
        assert alert["annotations"]["summary"] == "12% of last night's photos failed"
        # The database and the broker answered every scrape, and Prometheus has the series
        # that say so: their alerts stay quiet because all is well, not for lack of a series.
        assert query(api, "min_over_time(refund_sorter_database_up[1m])") == 1
        assert query(api, "min_over_time(refund_sorter_broker_up[1m])") == 1
        # Every series the rules read is one the endpoint serves, by that name, with those
        # labels: all of them are there on this staged database but the audited accuracy,
        # which needs reviewers' decisions (the endpoint's own tests stage those).
        expressions = " ".join(rule["expr"] for rule in alert_rules(load(RULES)))
        used = set(re.findall(r"refund_sorter_[a-z_]+", expressions))
        names = set(get_json(f"{api}/label/__name__/values")["data"])
        assert used - names == {"refund_sorter_audit_accuracy_upper"}
        for name, labels in SERIES_LABELS.items():
            answer = get_json(f"{api}/series?match[]={name}")["data"]
            assert {frozenset(series) - {"__name__", "job", "instance"} for series in answer} == {
                frozenset(labels)
            }, name
        failed_share_alert()  # once more, after those answers
        # Nothing else at any poll: not the running sweep's failures, nor a night that did not
        # finish, nor the flagged photo waiting 4 hours, nor an empty queue, nor the database
        # or the broker. The endpoint's own alert may have been pending before the first
        # scrape (no `up` series yet), or after one that outlasted the test's 1 s timeout.
        assert seen <= {"RefundSorterFailedShareHigh", "RefundSorterMetricsDown"}
    finally:
        for process in reversed(processes):
            process.stop()  # SIGTERM, then SIGKILL to its process group, by its pid
