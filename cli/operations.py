"""Operations commands: sweep, runs, export, db upgrade, flower and metrics-server, for the
operators.

Celery, the producer, the workers and the metrics endpoint are imported inside the commands
that drive them (``sweep``, ``flower``, ``metrics-server``), so ``runs``, ``export`` and ``db``
start without them.
"""

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from cli.common import friendly, listen_options
from models import ItemStatus, SweepStatus
from refund_sorter import crud
from refund_sorter.config import Settings, get_settings
from refund_sorter.db import check_schema, session_factory
from refund_sorter.db import upgrade as run_upgrade
from refund_sorter.errors import UserError
from refund_sorter.export import ExportFilter, sweep_csv_path, write_csv
from refund_sorter.redact import redact


@click.command()
@click.option(
    "--local", is_flag=True, help="Classify in this process, without a broker or workers."
)
@click.option("--wait", is_flag=True, help="Follow the run until the workers finish it.")
@click.option(
    "--timeout",
    default=3600.0,
    show_default=True,
    help="Seconds --wait follows the run before giving up.",
)
@friendly
def sweep(local, wait, timeout) -> None:
    """Sweep the incoming folder once: classify every new image, file it, export the CSV."""
    from producer.sweep import run_sweep

    settings = get_settings()
    check_schema(settings.database_url)
    if local:
        from worker.local import local_dispatch

        dispatch, trigger = local_dispatch(settings, progress=True), "local"
    else:
        from refund_sorter.celery_app import publish

        dispatch, trigger = publish, "manual"
    report = run_sweep(settings, dispatch=dispatch, trigger=trigger, progress=True)
    run = report.run
    if run.status == SweepStatus.SKIPPED:
        click.echo(f"sweep {run.id} skipped: {run.message}")
        with session_factory(settings.database_url)() as session:
            other = crud.running_sweep(session)
        if wait and not local and other is not None:
            # The images this sweep would have taken are that sweep's, or the next one's:
            # following it tells the operator when they are done.
            click.echo(f"following sweep {other.id} instead")
            _follow(settings, other.id, other.enqueued, timeout)
            _print_run(settings, other.id)
        return
    click.echo(
        f"sweep {run.id}: found {run.found} files in {settings.incoming_dir}; "
        f"enqueued {run.enqueued}, failed {run.failed}, known {run.known} "
        "(already classified, a duplicate, or failed before and still there), "
        f"left for later {run.deferred} (still being written)"
    )
    for path, reason in report.failed[:20]:
        click.echo(f"  failed {path}: {reason}")
    if wait and not local and run.enqueued:
        _follow(settings, run.id, run.enqueued, timeout)
    _print_run(settings, run.id)


def _follow(settings: Settings, run_id: int, total: int, timeout: float) -> None:
    """Show the sweep's progress until it ends; while it runs, the same stall check as beat's
    publishes its queued images again if it stalls, so following works without beat too."""
    from producer.sweep import resume_stalled_sweep
    from refund_sorter.celery_app import classify_queue_depth, publish

    sessions = session_factory(settings.database_url)
    deadline = time.monotonic() + timeout
    trouble = None
    with tqdm(total=total, desc="classified", unit="img") as bar:
        while True:
            with sessions() as session:
                run = crud.get_sweep(session, run_id)
                bar.total = run.enqueued  # a sweep followed from the start is still scanning
                bar.update(run.enqueued - run.pending - bar.n)
                if run.status != SweepStatus.RUNNING:
                    return
            try:
                if resume_stalled_sweep(settings, publish, classify_queue_depth):
                    bar.write(f"sweep {run_id} stalled: its queued images were published again")
            except UserError as exc:  # the broker is away; say so once, keep following
                if str(exc) != trouble:
                    bar.write(f"stall check: {exc}")
                trouble = str(exc)
            if time.monotonic() > deadline:
                raise UserError(
                    f"sweep {run_id} still running after {timeout:.0f} s; "
                    "are the workers up? (celery -A worker worker)"
                )
            time.sleep(1.0)


def _print_run(settings: Settings, run_id: int) -> None:
    with session_factory(settings.database_url)() as session:
        run = crud.get_sweep(session, run_id)
        click.echo(
            f"status {run.status}: {run.succeeded} classified, {run.failed} failed, "
            f"{run.known} known, {run.deferred} left for later, {run.pending} still queued"
        )
        for path, reason in crud.deferred_files(session, run_id, limit=20):
            click.echo(f"  left for later {path}: {reason}")
        if run.status in (SweepStatus.FINISHED, SweepStatus.ABANDONED):
            click.echo(f"CSV: {sweep_csv_path(run, settings.export_dir)}")


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV file to write ('-' for standard output).",
)
@click.option("--sweep-run", type=int, help="Only this sweep run.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Classified on or after (UTC).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Classified on or before (UTC).")
@click.option(
    "--status",
    type=click.Choice([ItemStatus.OK.value, ItemStatus.FAILED.value]),
    help="Only this status.",
)
@friendly
def export(out, sweep_run, since, until, status) -> None:
    """Export predictions from the SQL table to CSV (streamed, constant memory)."""
    settings = get_settings()
    check_schema(settings.database_url)
    flt = ExportFilter(
        sweep_run=sweep_run,
        since=since.date() if since else None,
        until=until.date() if until else None,
        status=status,
    )
    with session_factory(settings.database_url)() as session:
        if str(out) == "-":
            n = write_csv(session, flt, sys.stdout)
        else:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", newline="", encoding="utf-8") as fh:
                n = write_csv(session, flt, fh)
    click.echo(f"exported {n} rows to {out}", err=str(out) == "-")


@click.command()
@click.option("--last", default=10, show_default=True, help="How many runs to show.")
@friendly
def runs(last) -> None:
    """Show the most recent sweep runs and their counts."""
    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url)() as session:
        rows = crud.recent_sweeps(session, last=last)
    click.echo(
        f"{'run':>5} {'started (UTC)':<17} {'status':<10} {'trigger':<7} "
        f"{'found':>6} {'ok':>6} {'failed':>6} {'known':>7} {'later':>5} {'queued':>6}"
    )
    for r in rows:
        # Masked again on display: rows stored by older versions may hold a password.
        message = f"  {redact(r.message)}" if r.message else ""
        click.echo(
            f"{r.id:>5} {crud.as_utc(r.started_at):%Y-%m-%d %H:%M} {r.status:<10} "
            f"{r.trigger:<7} {r.found:>6} {r.succeeded:>6} {r.failed:>6} "
            f"{r.known:>7} {r.deferred:>5} {r.pending:>6}{message}"
        )
    if any(r.deferred for r in rows):
        click.echo(
            "later: files still being written when the sweep read them, left in incoming/ "
            "for a later sweep (refund-sorter export --sweep-run N lists them, and why)"
        )


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@friendly
def upgrade() -> None:
    """Create or migrate the tables to the latest schema (Alembic)."""
    settings = get_settings()
    run_upgrade(settings.database_url)
    click.echo(f"database {redact(settings.database_url)} is at the latest schema")


@click.command()
@listen_options(port=5555)
@friendly
def flower(address, port) -> None:
    """Start Flower, the dashboard of workers and tasks, behind basic auth.

    Flower shows every image's path and hash, so this never starts it without the
    credentials in REFUND_SORTER_FLOWER_BASIC_AUTH (user:password), and it listens on
    127.0.0.1 unless told otherwise. Flower's own FLOWER_* variables still apply to
    everything else.
    """
    credentials = get_settings().flower_basic_auth
    if credentials is None or not credentials.get_secret_value():
        raise UserError(
            "Flower shows every image's path and hash to whoever can open it: set "
            "REFUND_SORTER_FLOWER_BASIC_AUTH=user:password to start it"
        )
    # The credentials travel in the environment, not on the command line, where any
    # local user could read them (ps); exec, so signals reach Flower itself.
    env = {**os.environ, "FLOWER_BASIC_AUTH": credentials.get_secret_value()}
    argv = ["-m", "celery", "-A", "worker", "flower", f"--address={address}", f"--port={port}"]
    os.execve(sys.executable, [sys.executable, *argv], env)


@click.command("metrics-server")
@listen_options(port=9808)
@friendly
def metrics_server(address, port) -> None:
    """Serve the Prometheus metrics on http://ADDRESS:PORT/metrics.

    Each scrape reads the database and the broker afresh: the last finished sweep, the
    running one, the queues, the review backlog, the audit accuracy, drift and the model
    version (docs/monitoring.md). Basic auth when REFUND_SORTER_METRICS_BASIC_AUTH is set
    (user:password).
    """
    from monitoring.server import metrics_server as make_server

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = make_server(settings, address, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
    auth = "basic auth" if settings.metrics_basic_auth else "no password"
    click.echo(f"serving metrics on http://{address}:{port}/metrics ({auth})")
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a plain stop
        server.serve_forever()
