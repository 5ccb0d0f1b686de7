"""Review commands: the review desk's server (and the password hashes its reviewers log in
with), the export of reviewed photos into a training folder, the live accuracy that the
reviews measure and the review threshold they suggest, and the night report (the desk's
night page as one file).

FastAPI and uvicorn are imported inside ``review-server``, so the other commands start
without them. Only ``threshold``'s suggestion imports PyTorch (to read the model's offline
threshold); ``threshold --set`` and ``--clear`` do not.
"""

import sys
from pathlib import Path

import click

from cli.common import friendly, listen_options, serve
from refund_sorter.config import get_settings
from refund_sorter.db import check_schema, session_factory
from refund_sorter.errors import UserError
from refund_sorter.passwords import hash_password

MIN_PASSWORD_LENGTH = 10


@click.group(invoke_without_command=True)
@listen_options(port=8000)
@click.pass_context
@friendly
def review_server(ctx: click.Context, address: str, port: int) -> None:
    """Serve the review desk, where people confirm or correct the photos flagged for review.

    Needs REFUND_SORTER_REVIEWERS (name:hash pairs; `review-server hash-password` makes a
    hash) and REFUND_SORTER_REVIEW_SECRET_KEY (32 random characters or more, which sign the
    login cookies). Listens on 127.0.0.1 unless told otherwise: reach it from elsewhere
    through a TLS proxy.
    """
    if ctx.invoked_subcommand is not None:
        return
    from review.app import create_app

    serve(create_app, "review desk", address, port)


@review_server.command("hash-password")
@friendly
def hash_password_command() -> None:
    """Ask for a reviewer's new password (twice, not shown) and print its hash.

    Put it into REFUND_SORTER_REVIEWERS as name:HASH (several separated by commas). Only
    the hash is printed, so `REFUND_SORTER_REVIEWERS="anna:$(refund-sorter review-server
    hash-password)"` works.
    """
    password = click.prompt("New password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"choose a password of {MIN_PASSWORD_LENGTH} characters or more")
    click.echo(hash_password(password))


@click.command("export-training-set")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Only photos whose latest review was on or after this day (UTC).",
)
@friendly
def export_training_set(out_dir: Path, since) -> None:
    """Copy the reviewed photos into OUT_DIR/<main>/<sub>/, under their latest answer.

    That is the layout `refund-sorter train` reads. A photo whose file is gone is reported,
    not fatal; one already exported is not copied again, and one whose answer changed is
    moved to its new folder.
    """
    from review.training_set import export_training_set as export
    from review.training_set import reviewed_photos

    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url)() as session:
        photos = reviewed_photos(session, since.date() if since else None)
    try:
        report = export(photos, out_dir, progress=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    click.echo(
        f"{len(photos)} reviewed photos: {report.total} copied into {out_dir} "
        f"({report.moved} of them moved to a new category), {report.already_there} already "
        f"there, {len(report.missing)} missing"
    )
    for category, n in sorted(report.copied.items()):
        click.echo(f"  {category:<32} {n:>6}")
    for path, why in report.missing[:20]:
        click.echo(f"  missing {path}: {why}")
    if len(report.missing) > 20:
        click.echo(f"  ... and {len(report.missing) - 20} more")


@click.command()
@click.argument("sweep", type=int, required=False)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="HTML file to write (its folder is made if missing).",
)
@friendly
def report(sweep: int | None, out: Path) -> None:
    """Write one night's page as one self-contained HTML file, to mail or archive.

    SWEEP is the night's sweep number (refund-sorter runs lists them); default: the last
    night, the newest finished sweep. The same page as the review desk's /nights/SWEEP:
    counts by status, failures by reason, category mix against the trailing nights,
    confidences, throughput, audit accuracy and model version, with the stylesheet and the
    plots inside the file.
    """
    from review.report import night_report

    settings = get_settings()
    check_schema(settings.database_url)
    night, html = night_report(settings, sweep)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(
        f"night of {night.date} (sweep {night.sweep}, {night.status}): "
        f"{len(html.encode()) // 1024} KiB written to {out}"
    )


@click.command()
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The nights started on or after this day (UTC); default: the last 28 nights.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@friendly
def accuracy(since, as_json: bool) -> None:
    """How accurate the sorting is on live photos: per night and over the nights together.

    From the blind audits, the accuracy of the photos nobody reviews; from the reviews, the
    share of flagged photos corrected; both together, the accuracy as filed after review.
    Each with its 95% interval, its count and its coverage (decided of drawn). A night stays
    provisional until all of its audits are decided.
    """
    import dataclasses
    import json

    from review.accuracy import report

    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url)() as session:
        found = report(session, since=since.date() if since else None)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), default=str, indent=2))
        return
    span = f"since {found.since}" if found.since else "the last nights"
    click.echo(f"{len(found.nights)} nights ({span}), together:")
    for line in accuracy_lines(found.window):
        click.echo(f"  {line}")
    for night in found.nights:
        mark = " (provisional: audits left to decide)" if night.figures.provisional else ""
        click.echo(f"night of {night.started_at:%Y-%m-%d} (sweep {night.sweep}){mark}:")
        for line in accuracy_lines(night.figures):
            click.echo(f"  {line}")


def accuracy_lines(figures) -> list[str]:
    """One night's (or the window's) figures, one line each."""
    from review.accuracy import share

    c = figures.counts
    lines = [
        f"{c.photos} photos: {c.flagged} flagged ({c.flagged_decided} decided), "
        f"{c.audits} drawn for audit ({c.audits_decided} decided)",
        f"unflagged accuracy   main {share(figures.unflagged_main)}   "
        f"sub {share(figures.unflagged_sub)}",
        f"flagged corrected    {share(figures.corrected)}",
        f"as filed             main {share(figures.filed_main)}   sub {share(figures.filed_sub)}",
        f"model, every photo   main {share(figures.model_main)}   sub {share(figures.model_sub)}",
    ]
    for main, (on_main, on_sub) in figures.by_main.items():
        lines.append(f"  unflagged, predicted {main}: main {share(on_main)}   sub {share(on_sub)}")
    return lines


@click.command()
@click.option(
    "--target",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.97,
    show_default=True,
    help="The sub accuracy the unflagged photos should reach.",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The nights started on or after this day (UTC); default: the last 28 nights.",
)
@click.option(
    "--set",
    "new_value",
    type=click.FloatRange(0, 1),
    help="Set this review threshold for the model version instead of suggesting one.",
)
@click.option(
    "--clear", is_flag=True, help="Remove the threshold set for the model version instead."
)
@click.option(
    "--model-version",
    help="The model version --set or --clear acts on; default: the serving model "
    "(refund-sorter model list).",
)
@click.option("--by", "set_by", help="Who sets it, as recorded; default: the OS user.")
@friendly
def threshold(
    target: float,
    since,
    new_value: float | None,
    clear: bool,
    model_version: str | None,
    set_by: str | None,
) -> None:
    """Suggest the review threshold at which the unflagged photos reach TARGET accuracy, or
    set (--set) or clear (--clear) the one a model version uses.

    The suggestion is measured on the live labelled photos of the current model (the decided
    audits and flagged photos, weighted by their strata), beside the threshold stored in the
    model file and the one in force. It only suggests: --set applies a value to one model
    version (workers take it up from their next batch), and no other model inherits it.
    REFUND_SORTER_REVIEW_THRESHOLD, when set, overrides it for every model.
    """
    settings = get_settings()
    check_schema(settings.database_url)
    if new_value is not None or clear:
        change_threshold(settings, new_value, clear, model_version, set_by)
    elif model_version is not None or set_by is not None:
        raise UserError("--model-version and --by go with --set or --clear")
    else:
        suggest_threshold(settings, target, since)


def change_threshold(
    settings, new_value: float | None, clear: bool, model_version: str | None, set_by: str | None
) -> None:
    """``threshold --set`` and ``--clear``: one model version's threshold, before and after."""
    import getpass

    from refund_sorter import crud
    from refund_sorter.review_threshold import SETTING, describe_set
    from registry.registry import serving_version

    if new_value is not None and clear:
        raise UserError("give --set or --clear, not both")
    version = model_version or serving_version(settings)
    if set_by is None:
        try:
            set_by = getpass.getuser()
        except (OSError, KeyError):
            raise UserError("cannot tell who you are: give --by NAME") from None
    if not set_by.strip() or len(set_by) > 128:
        raise UserError("--by: give a name of 1 to 128 characters")

    def shown(row) -> str:
        if row is None:
            return "none (the model file's own applies)"
        return f"{row.threshold:.2f} ({describe_set(row)})"

    with session_factory(settings.database_url).begin() as session:
        # A version mistyped would be stored and never apply: only one the model registry
        # knows, or one that sweeps ran with, is taken.
        if not crud.model_version_known(session, model_version=version):
            raise UserError(
                f"unknown model version {version}: no sweep ran with it and the model "
                "registry does not know it (refund-sorter model list)"
            )
        before = shown(crud.review_threshold_set(session, model_version=version))
        if clear:
            crud.clear_review_threshold(session, model_version=version, cleared_by=set_by)
            after = shown(None)
        else:
            row = crud.set_review_threshold(
                session, model_version=version, threshold=new_value, set_by=set_by
            )
            after = shown(row)
    click.echo(f"model {version}: review threshold set for it {before} -> {after}")
    click.echo("workers and local sweeps apply it from their next batch")
    if settings.review_threshold is not None:
        click.secho(
            f"note: {SETTING}={settings.review_threshold} is set and overrides it for every "
            "model; unset it for this value to take effect",
            fg="yellow",
            err=True,
        )


def suggest_threshold(settings, target: float, since) -> None:
    """``threshold`` without --set or --clear: the suggestion, beside the threshold in force."""
    from classifier.checkpoint import load_checkpoint
    from refund_sorter.review_threshold import review_threshold_in_force
    from registry.registry import serving_file
    from review.accuracy import share, window
    from review.threshold import live_confidences, suggest

    checkpoint = load_checkpoint(serving_file(settings))
    nights = window(since=since.date() if since else None)
    with session_factory(settings.database_url)() as session:
        in_force = review_threshold_in_force(
            session,
            settings,
            model_version=checkpoint.version,
            model_threshold=checkpoint.review_threshold,
        )
        strata = live_confidences(session, model_version=checkpoint.version, sweeps=nights)
    click.echo(
        f"model {checkpoint.version}: threshold stored in the model (chosen offline) "
        f"{checkpoint.review_threshold:.2f}; in force {in_force.value:.2f}, {in_force.why}"
    )
    if not strata:
        raise UserError(f"no photo of model {checkpoint.version} in these nights to measure by")
    found = suggest(strata, target, min_labelled=settings.threshold_min_labelled)
    point = found.suggested
    if point is None:
        click.echo(
            f"no threshold reaches {target:.1%} with 95% confidence on these photos, with at "
            f"least {found.min_labelled} labelled photos above it "
            "(REFUND_SORTER_THRESHOLD_MIN_LABELLED)"
        )
        sys.exit(1)
    click.echo(
        f"suggested threshold {point.threshold:.2f}: flags {point.flagged_share:.1%} of the "
        f"photos; unflagged sub accuracy {share(point.accuracy)}, its lower bound reaching "
        f"{target:.1%}; rests on {point.accuracy.n} labelled photos above it"
    )
    for p in found.curve[::10]:
        click.echo(f"  {p.threshold:.2f}  flags {p.flagged_share:6.1%}  {share(p.accuracy)}")
    click.echo(f"apply it with: refund-sorter threshold --set {point.threshold:.2f}")
