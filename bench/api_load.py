"""Load on the returns counter's API, run by hand (never in CI): real HTTP requests on
concurrent keep-alive connections, one thread per client, against a running
``refund-sorter api-server`` and its workers.

    python bench/api_load.py --url http://127.0.0.1:8100 --token TOKEN \
        --data ../shared/datasets/clothing-small/val --clients 1 --clients 8 --clients 32 \
        --requests 300 [--model MODEL] [--json out.json]

For each number of clients it sends ``--requests`` photos of ``--data`` (in turn, every
client its own) to ``POST /v1/classify`` and prints requests/s, the latency's p50, p95 and
p99 and the errors (any answer but 200, by status). Each photo is made new for its request
(a JPEG comment with a counter, the pixels unchanged), so that every request is classified
rather than answered from the row of an earlier run; ``--same`` sends the photos as they
are (after the first round, the rate of answers from rows). With ``--model`` the in-process
limit of that model on the same photos (``bench/throughput.py``'s pipeline: decode on every
core, one forward pass per batch) is measured in the same run, and each row is also given
as a share of it.

With ``--night DIR`` a night runs at the same time: DIR's photos (made new, as above) are
copied into the incoming folder and swept through the broker just before the first row,
and the run reports when that night finished, so that the rows show the counter's latency
while the workers also classify a night (run it with the deployment's REFUND_SORTER_*
environment, which names the folder, the database and the broker).

Start the server with REFUND_SORTER_API_RATE_LIMIT=0, or its rate limit is what is measured.
"""

import http.client
import json
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photos_of(data: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise click.ClickException(f"no JPEG photos below {data}")
    return [p.read_bytes() for p in files[:limit]]


def made_new(jpeg: bytes, mark: str) -> bytes:
    """The same JPEG with a comment (COM segment) after its start marker: new bytes, a new
    content hash, the same pixels."""
    comment = mark.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_clients(
    url: str, token: str, photos: list[bytes], clients: int, requests: int, same: bool, run: str
) -> dict:
    """``requests`` photos sent by ``clients`` threads, each on its own connection."""
    parts = urlsplit(url)
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            body = photos[n % len(photos)]
            if not same:
                body = made_new(body, f"refund-sorter bench {run} {clients} {n}")
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": requests,
        "requests_per_s": requests / wall,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "mean_ms": 1000 * statistics.fmean(latencies),
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
    }


def in_process_limit(model: Path, photos: list[bytes], batch: int) -> float:
    """The model's in-process limit on these photos, images/s (``bench/throughput.py``)."""
    import tempfile

    from throughput import pipeline_limit

    from classifier.predict import Classifier

    clf = Classifier.from_path(model, "auto")
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i, data in enumerate(photos):
            path = Path(folder) / f"{i:06d}.jpg"
            path.write_bytes(data)
            files.append(path)
        return pipeline_limit(clf, files, batch)


def start_night(folder: Path, run: str) -> tuple[int, float]:
    """Copy ``folder``'s photos, made new, into the incoming folder and sweep them through
    the broker: (the sweep's id, when it started)."""
    from producer.sweep import run_sweep
    from refund_sorter.celery_app import publish
    from refund_sorter.config import get_settings

    settings = get_settings()
    target = Path(settings.incoming_dir) / f"bench-{run}"
    target.mkdir(parents=True)
    for i, data in enumerate(photos_of(folder, 100_000)):
        (target / f"{i:06d}.jpg").write_bytes(made_new(data, f"refund-sorter night {run} {i}"))
    started = time.monotonic()
    report = run_sweep(settings, dispatch=publish, trigger="manual")
    click.echo(f"night {report.run.id}: {len(report.enqueued)} photos enqueued")
    return report.run.id, started


def follow_night(sweep_id: int, started: float, timeout: float = 3600) -> dict:
    """Wait for the night to end: its status, photos and seconds from its start."""
    from refund_sorter import crud
    from refund_sorter.config import get_settings
    from refund_sorter.db import session_factory

    sessions = session_factory(get_settings().database_url)
    while True:
        with sessions() as session:
            run = crud.get_sweep(session, sweep_id)
        if run.status != "running" or time.monotonic() - started > timeout:
            break
        time.sleep(1)
    return {
        "sweep": sweep_id,
        "status": run.status,
        "photos": run.succeeded + run.failed,
        "seconds": (crud.as_utc(run.finished_at) - crud.as_utc(run.started_at)).total_seconds()
        if run.finished_at
        else time.monotonic() - started,
    }


@click.command()
@click.option("--url", default="http://127.0.0.1:8100", show_default=True, help="The API.")
@click.option("--token", required=True, help="An API token (refund-sorter api-token create).")
@click.option(
    "--data", type=click.Path(exists=True, path_type=Path), required=True, help="JPEG photos."
)
@click.option(
    "--clients",
    type=int,
    multiple=True,
    default=(1, 8, 32),
    show_default=True,
    help="Concurrent clients, one row each (repeat the option).",
)
@click.option("--requests", default=300, show_default=True, help="Requests per row.")
@click.option("--limit", default=1000, show_default=True, help="Photos of --data used, at most.")
@click.option("--same", is_flag=True, help="Send the photos unchanged (answered from rows).")
@click.option(
    "--model",
    type=click.Path(exists=True, path_type=Path),
    help="Also measure this model's in-process limit on the same photos.",
)
@click.option("--batch", default=32, show_default=True, help="Batch of the in-process limit.")
@click.option(
    "--night",
    type=click.Path(exists=True, path_type=Path),
    help="Sweep these photos as a night while the rows run.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the rows.")
def main(url, token, data, clients, requests, limit, same, model, batch, night, json_path) -> None:
    """Requests/s, p50/p95/p99 and errors of POST /v1/classify at each --clients."""
    photos = photos_of(data, limit)
    run = f"{time.time():.0f}"
    rows = []
    sweep = start_night(night, run) if night else None
    click.echo(f"{'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    for n in clients:
        row = run_clients(url, token, photos, n, requests, same, run)
        rows.append(row)
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "none"
        click.echo(
            f"{n:>7} {row['requests_per_s']:>8.1f} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} "
            f"{row['p99_ms']:>8.0f}  {errors}"
        )
    result = {"url": url, "photos": len(photos), "rows": rows}
    if sweep is not None:
        result["night"] = follow_night(*sweep)
        click.echo(
            f"night {result['night']['sweep']}: {result['night']['status']} after "
            f"{result['night']['seconds']:.0f} s, {result['night']['photos']} photos"
        )
    if model is not None:
        limit_rate = in_process_limit(model, photos, batch)
        result["in_process_limit_per_s"] = limit_rate
        click.echo(f"in-process limit of {model.name}: {limit_rate:.1f} images/s")
        for row in rows:
            row["share_of_limit"] = row["requests_per_s"] / limit_rate
            click.echo(f"  {row['clients']:>3} clients: {row['share_of_limit']:.0%} of it")
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
