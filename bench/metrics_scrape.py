"""How long a scrape of the metrics endpoint takes with a million predictions, run by hand
(never in CI):

    python bench/metrics_scrape.py [--rows 1000000] [--nights 62] [--scrapes 10]

It makes a PostgreSQL database of its own (dropped at the end), fills it in SQL
(generate_series, no Python loop over rows) with ``--rows`` predictions spread evenly over
``--nights`` finished nightly sweeps, in the 5 main and 10 sub categories of clothing-small
at that data set's mix, 2% failed, about 9.7% flagged for review, 2% of the others drawn for
the audit, and the desk's decisions on those of every night but the last (97% decided; of
the flagged ones 25% given another main category and 15% another sub, of the audited ones
5% and 5%). The last night's mix and confidences moved (drift: shoes and hats, less sure);
a skipped and an abandoned sweep lie beside them. Then VACUUM ANALYZE, as autovacuum leaves
the older nights (the migrations have it visit the table after each night), and the last
night's rows written once more, as its workers leave them, with autovacuum held off: the
morning before autovacuum has been by, the slowest a morning gets.
On an empty Redis database of its own (claimed like the tests', emptied at the end) it
leaves 300 classify tasks waiting and 128 delivered and not acknowledged. It starts the real
endpoint (``refund-sorter metrics-server``) in its own process, scrapes it once to warm it
(the first scrape imports scipy and hashes the model file), then times ``--scrapes`` scrapes
over HTTP and prints the median, the fastest and the slowest, with the collector's own time
(``refund_sorter_scrape_duration_seconds``), the CPU and the load average.
"""

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import click
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refund_sorter.celery_app import SorterCelery  # noqa: E402
from refund_sorter.config import Settings  # noqa: E402
from refund_sorter.db import dispose, upgrade  # noqa: E402
from refund_sorter.messages import (  # noqa: E402
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    IMAGES_PER_TASK,
    WorkItem,
    task_args,
)

MODEL = ROOT / "assets" / "model" / "refund-sorter-resnet18.pt"
VERSION = "b3nchm0de1v1"
THRESHOLD = 0.52  # sub confidence 0.3 + 0.7 sqrt(u) falls below it for 9.7% of photos
# clothing-small's train/ split: photos per main/sub category, the nights' usual mix.
MIX = {
    ("upperwear", "t-shirt"): 795,
    ("bottomwear", "pants"): 468,
    ("upperwear", "longsleeve"): 455,
    ("upperwear", "shirt"): 290,
    ("onepiece", "dress"): 241,
    ("bottomwear", "shorts"): 202,
    ("footwear", "shoes"): 198,
    ("upperwear", "outwear"): 184,
    ("headwear", "hat"): 123,
    ("bottomwear", "skirt"): 112,
}
# The last night: a photo station sending mostly shoes and hats (its mix moved).
DRIFTED = {**MIX, ("footwear", "shoes"): 900, ("headwear", "hat"): 500}
CLAIM_KEY = "refund-sorter-tests:claimed-by"  # the tests' claim: they leave the database alone


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


@contextmanager
def scratch_database(admin_url: str):
    name = f"rs_bench_metrics_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield url
    finally:
        dispose(url)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mix_rows(drifted: bool) -> list[tuple]:
    """(drifted, main, sub, lo, hi): each category's slice of [0, 1)."""
    weights = DRIFTED if drifted else MIX
    total, at, rows = sum(weights.values()), 0.0, []
    for (main, sub), n in weights.items():
        rows.append((drifted, main, sub, at, at + n / total))
        at += n / total
    rows[-1] = (*rows[-1][:4], 1.0)
    return rows


FILL = """
INSERT INTO predictions (content_hash, model_version, sweep_run_id, status, file_name,
    original_path, final_path, main_category, main_confidence, sub_category, sub_confidence,
    needs_review, top_subs, sub_margin, audited, audit_rate, review_threshold, error,
    created_at, classified_at)
SELECT md5(r.g::text) || md5((-r.g)::text), %(version)s, n.sweep_id,
    CASE WHEN r.f < 0.02 THEN 'failed' ELSE 'ok' END,
    'IMG_' || r.g || '.jpg',
    'dock-' || (r.g %% 4) || '/' || to_char(n.started_at, 'YYYY-MM-DD') || '/IMG_' || r.g || '.jpg',
    CASE WHEN r.f < 0.02 THEN 'failed/' ELSE 'processed/' END || 'dock-' || (r.g %% 4) || '/'
        || to_char(n.started_at, 'YYYY-MM-DD') || '/IMG_' || r.g || '.jpg',
    CASE WHEN r.f >= 0.02 THEN m.main END,
    CASE WHEN r.f >= 0.02 THEN least(1.0, c.sub + 0.1 * r.a) END,
    CASE WHEN r.f >= 0.02 THEN m.sub END,
    CASE WHEN r.f >= 0.02 THEN c.sub END,
    r.f >= 0.02 AND c.sub < %(threshold)s,
    CASE WHEN r.f >= 0.02 THEN json_build_array(
        json_build_object('main', m.main, 'sub', m.sub, 'p', round(c.sub::numeric, 4)),
        json_build_object('main', 'upperwear', 'sub', 'shirt',
                          'p', round(((1 - c.sub) * 0.6)::numeric, 4)),
        json_build_object('main', 'bottomwear', 'sub', 'pants',
                          'p', round(((1 - c.sub) * 0.3)::numeric, 4))) END,
    CASE WHEN r.f >= 0.02 THEN c.sub - (1 - c.sub) * 0.6 END,
    r.f >= 0.02 AND c.sub >= %(threshold)s AND r.a < 0.02,
    CASE WHEN r.f >= 0.02 THEN 0.02 END,
    CASE WHEN r.f >= 0.02 THEN %(threshold)s END,
    CASE WHEN r.f < 0.02 THEN 'cannot identify image file' END,
    n.started_at,
    n.started_at + interval '60 milliseconds' * (r.g / %(nights)s)
FROM (SELECT g, random() AS u, random() AS v, random() AS f, random() AS a
      FROM generate_series(1, %(rows)s) AS g) AS r
JOIN bench_nights AS n ON n.idx = 1 + (r.g - 1) %% %(nights)s
JOIN bench_mix AS m ON m.drifted = n.drifted AND r.u >= m.lo AND r.u < m.hi
CROSS JOIN LATERAL (
    SELECT CASE WHEN n.drifted THEN 0.22 ELSE 0.3 END + 0.7 * sqrt(r.v) AS sub) AS c
"""

REVIEWS = """
INSERT INTO reviews (prediction_id, reviewer, main_category, sub_category, reviewed_at)
SELECT p.id, 'anna',
    CASE WHEN d.wrong_main THEN
        CASE WHEN p.main_category = 'upperwear' THEN 'bottomwear' ELSE 'upperwear' END
        ELSE p.main_category END,
    CASE WHEN d.wrong_main THEN
            CASE WHEN p.main_category = 'upperwear' THEN 'pants' ELSE 'shirt' END
         WHEN d.wrong_sub THEN
            CASE WHEN p.sub_category = 'shirt' THEN 't-shirt' ELSE 'shirt' END
         ELSE p.sub_category END,
    p.classified_at + interval '8 hours'
FROM predictions AS p
JOIN bench_nights AS n ON n.sweep_id = p.sweep_run_id
CROSS JOIN LATERAL (
    SELECT r < CASE WHEN p.needs_review THEN 0.25 ELSE 0.05 END AS wrong_main,
           r > CASE WHEN p.needs_review THEN 0.85 ELSE 0.95 END AS wrong_sub
    FROM (SELECT random() + 0 * p.id AS r) AS x) AS d
WHERE p.status = 'ok' AND (p.needs_review OR p.audited) AND n.idx < %(nights)s
  AND random() < 0.97
"""

COUNTERS = """
UPDATE sweep_runs AS s SET succeeded = c.ok, failed = c.failed, found = c.ok + c.failed,
    enqueued = c.ok + c.failed, finished_at = c.last + interval '30 seconds',
    updated_at = c.last + interval '30 seconds'
FROM (SELECT sweep_run_id, count(*) FILTER (WHERE status = 'ok') AS ok,
             count(*) FILTER (WHERE status = 'failed') AS failed, max(classified_at) AS last
      FROM predictions GROUP BY sweep_run_id) AS c
WHERE s.id = c.sweep_run_id
"""


def fill(url: str, rows: int, nights: int) -> None:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("SELECT setseed(0.18)")
        conn.execute(
            "CREATE TEMP TABLE bench_nights (idx int, sweep_id bigint, started_at timestamptz, "
            "drifted bool)"
        )
        today = "date_trunc('day', now())"
        for idx in range(1, nights + 1):
            started = f"{today} - interval '{nights - idx + 1} days' + interval '2 hours'"
            (sweep_id,) = conn.execute(
                "INSERT INTO sweep_runs (status, trigger, model_version, started_at, updated_at,"
                " found, enqueued, succeeded, failed, known, pending, deferred) "
                f"VALUES ('finished', 'beat', %s, {started}, {started}, 0, 0, 0, 0, 0, 0, 0) "
                "RETURNING id",
                (VERSION,),
            ).fetchone()
            conn.execute(
                f"INSERT INTO bench_nights VALUES (%s, %s, {started}, %s)",
                (idx, sweep_id, idx == nights),
            )
            if idx in (nights // 3, nights // 2):  # a second sweep of that night, skipped
                later = f"{started} + interval '1 hour'"
                conn.execute(
                    "INSERT INTO sweep_runs (status, trigger, model_version, started_at, "
                    "updated_at, finished_at, found, enqueued, succeeded, failed, known, "
                    "pending, deferred, message) VALUES ('skipped', 'manual', %s, "
                    f"{later}, {later}, {later}, 0, 0, 0, 0, 0, 0, 0, %s)",
                    (VERSION, f"sweep {sweep_id} still running"),
                )
        conn.execute(
            "INSERT INTO sweep_runs (status, trigger, model_version, started_at, updated_at, "
            "finished_at, found, enqueued, succeeded, failed, known, pending, deferred, "
            "message) VALUES ('abandoned', 'beat', %s, "
            f"{today} - interval '{nights + 1} days', {today} - interval '{nights + 1} days', "
            f"{today} - interval '{nights} days', 12, 12, 0, 0, 0, 12, 0, "
            "'no progress for 12 hours')",
            (VERSION,),
        )
        conn.execute(
            "CREATE TEMP TABLE bench_mix (drifted bool, main text, sub text, lo float8, hi float8)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bench_mix VALUES (%s, %s, %s, %s, %s)",
                mix_rows(False) + mix_rows(True),
            )
        params = {"version": VERSION, "threshold": THRESHOLD, "nights": nights, "rows": rows}
        conn.execute(FILL, params)
        conn.execute(REVIEWS, params)
        conn.execute(COUNTERS)
        conn.execute("VACUUM ANALYZE")
        # The morning after: the last night's rows as its workers leave them (each written
        # again when classified), before autovacuum has been by; kept so while timing.
        conn.execute("ALTER TABLE predictions SET (autovacuum_enabled = false)")
        conn.execute(
            "UPDATE predictions SET classified_at = classified_at WHERE sweep_run_id = "
            "(SELECT sweep_id FROM bench_nights WHERE idx = %s)",
            (nights,),
        )
        conn.execute("ANALYZE predictions")
        counts = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE needs_review), "
            "count(*) FILTER (WHERE audited), (SELECT count(*) FROM reviews) FROM predictions"
        ).fetchone()
    click.echo(
        f"filled: {counts[0]:,} predictions over {nights} nights, {counts[1]:,} flagged, "
        f"{counts[2]:,} audited, {counts[3]:,} reviews"
    )


@contextmanager
def scratch_redis(base: str):
    """An empty Redis database of 1-15, claimed as the tests claim theirs; emptied after."""
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.dbsize() == 0 and client.set(CLAIM_KEY, f"bench {os.getpid()}", nx=True):
            break
        client.close()
    else:
        raise click.ClickException("no empty Redis database among 1-15")
    try:
        yield f"{base}/{db}"
    finally:
        client.flushdb()
        client.close()


@contextmanager
def night_in_the_broker(broker_url: str, ready: int, unacked: int):
    """``ready + unacked`` classify tasks of 32 images, ``unacked`` of them held by a
    consumer that has not acknowledged them (until the block ends)."""
    app = SorterCelery(Settings(broker_url=broker_url), set_as_current=False)
    items = [
        WorkItem(f"dock-1/2026-03-01/IMG_{i:06d}.jpg", f"{i:064x}", VERSION)
        for i in range(IMAGES_PER_TASK)
    ]
    with app.producer_or_acquire() as producer:
        for _ in range(ready + unacked):
            app.send_task(CLASSIFY_TASK, args=task_args(items), producer=producer)
    with app.connection_for_read() as conn, conn.channel() as channel:
        for _ in range(unacked):
            channel.basic_get(CLASSIFY_QUEUE, no_ack=False)
        yield
    app.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> tuple[float, float, str]:
    """Seconds for one scrape over HTTP, the collector's own figure, and the text."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    elapsed = time.perf_counter() - started
    own = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("refund_sorter_scrape_duration_seconds ")
    )
    return elapsed, own, text


@contextmanager
def endpoint(database_url: str, broker_url: str, home: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_SORTER_")}
    env.update(
        REFUND_SORTER_HOME=str(home),
        REFUND_SORTER_DATABASE_URL=database_url,
        REFUND_SORTER_BROKER_URL=broker_url,
        REFUND_SORTER_MODEL_PATH=str(MODEL),
        PYTHONPATH=str(ROOT),
    )
    exe = Path(sys.executable).parent / "refund-sorter"
    proc = subprocess.Popen([str(exe), "metrics-server", "--port", str(port)], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            except urllib.error.HTTPError:
                break  # the 404 of a running server
            except urllib.error.URLError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("metrics-server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def series(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


@click.command()
@click.option("--rows", default=1_000_000, show_default=True, help="Predictions to fill.")
@click.option("--nights", default=62, show_default=True, help="Nights they spread over.")
@click.option("--scrapes", default=10, show_default=True, help="Timed scrapes.")
@click.option(
    "--admin-url",
    default="postgresql://postgres@127.0.0.1:5432/postgres",
    show_default=True,
    help="A PostgreSQL database to create and drop the scratch one from.",
)
@click.option("--redis-url", default="redis://127.0.0.1:6379", show_default=True)
def main(rows, nights, scrapes, admin_url, redis_url) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    click.echo(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {load}")
    with (
        scratch_database(admin_url) as database_url,
        scratch_redis(redis_url) as broker_url,
        TemporaryDirectory() as home,
    ):
        upgrade(database_url)
        started = time.perf_counter()
        fill(database_url, rows, nights)
        click.echo(f"fill took {time.perf_counter() - started:.1f} s")
        with (
            night_in_the_broker(broker_url, ready=300, unacked=128),
            endpoint(database_url, broker_url, Path(home)) as url,
        ):
            first = scrape(url)[0]
            click.echo(f"first scrape (imports scipy, hashes the model): {first:.3f} s")
            timed = [scrape(url) for _ in range(scrapes)]
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    for prefix in (
        "refund_sorter_database_up",
        "refund_sorter_broker_up",
        "refund_sorter_last_sweep_photos",
        "refund_sorter_last_sweep_flagged_ratio",
        "refund_sorter_drift_score",
        "refund_sorter_baseline_nights",
        "refund_sorter_queue_messages",
        "refund_sorter_review_backlog_photos",
        "refund_sorter_audit_accuracy{",
    ):
        for line in series(timed[-1][2], prefix):
            click.echo(f"  {line}")
    http = [t for t, _, _ in timed]
    own = [o for _, o, _ in timed]
    click.echo(
        f"{scrapes} scrapes over HTTP: median {statistics.median(http):.3f} s, "
        f"min {min(http):.3f} s, max {max(http):.3f} s; the collector's own time: median "
        f"{statistics.median(own):.3f} s, min {min(own):.3f} s, max {max(own):.3f} s"
    )
    click.echo(f"load average after: {load}")


if __name__ == "__main__":
    main()
