"""Model registry commands: ``refund-sorter model list | register FILE | promote VERSION |
rollback``, for whoever decides which model serves (``registry.registry``).

Only ``register`` imports PyTorch (it loads the checkpoint, as a worker would, to check it);
the others start without it.
"""

import json
from pathlib import Path

import click

from cli.common import friendly
from cli.comparison import gate_options, show_gate
from refund_sorter.config import get_settings
from refund_sorter.db import check_schema, session_factory
from refund_sorter.errors import UserError

by_option = click.option("--by", "by", help="Who does this, as the registry records it (required).")


def wait_options(func):
    """``--wait`` and ``--timeout``: what a promotion does while a sweep runs."""
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=3600.0,
        show_default=True,
        help="Seconds --wait waits for the running sweep before giving up.",
    )(func)
    return click.option(
        "--wait",
        is_flag=True,
        help="While a sweep runs, wait for it to finish instead of refusing.",
    )(func)


def recorded_name(by: str | None) -> str:
    """The name given with --by; UserError when there is none: the registry records who
    changed it."""
    if by is None:
        raise UserError("give --by NAME: the model registry records who does this")
    if not by.strip() or len(by) > 128:
        raise UserError("--by: give a name of 1 to 128 characters")
    return by.strip()


@click.group("model")
def model_group() -> None:
    """The model registry: the model versions this deployment knows, which one serves, and
    how that changes (register a new model, promote it, roll back)."""


@model_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly
def list_models(as_json: bool) -> None:
    """List the registered model versions, newest first, with their role, who registered
    and promoted them, and the figures each checkpoint carries; then the last changes of the
    serving model."""
    from refund_sorter import crud
    from registry import registry

    settings = get_settings()
    check_schema(settings.database_url)
    notes = []
    try:
        serving = registry.ensure_serving_model(settings)
        if note := registry.model_path_disagreement(settings, serving.version):
            notes.append(note)
    except UserError as exc:
        notes.append(f"no model serves: {exc}")
    with session_factory(settings.database_url)() as session:
        entries = crud.model_entries(session)
        history = crud.promotion_history(session, last=10)
    stored = {e.version: registry.servable(settings, e.version) for e in entries}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "models": [_entry_json(e, stored[e.version]) for e in entries],
                    "changes": [_change_json(c) for c in history],
                    "notes": notes,
                },
                indent=2,
            )
        )
        return
    if not entries:
        click.echo("no model registered")
    else:
        rows = [("version", "role", "registered", "promoted", "retired")]
        for e in entries:
            role = e.role if stored[e.version] else f"{e.role} (no file)"
            rows.append(
                (
                    e.version,
                    role,
                    _at_by(e.registered_at, e.registered_by),
                    _at_by(e.promoted_at, e.promoted_by),
                    _at_by(e.retired_at, e.retired_by),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
            if index:
                entry = entries[index - 1]
                for line in figure_lines(entry.figures):
                    click.echo(f"{'':{widths[0]}}  {line}")
                if entry.reason:
                    click.echo(f"{'':{widths[0]}}  promoted against advice: {entry.reason}")
    if history:
        click.echo("\nchanges of the serving model, newest first (UTC):")
        for c in history:
            click.echo(f"  {_change_line(c)}")
    if any(not ok for ok in stored.values()):
        click.echo(
            "\n(no file): the model store lacks its file (a version the upgrade found only on "
            "rows): it cannot serve until its file is registered again"
        )
    for note in notes:
        click.secho(f"note: {note}", fg="yellow", err=True)


@model_group.command("register")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@by_option
@click.option(
    "--replace",
    is_flag=True,
    help="Retire the candidate registered before (one candidate at a time) and register "
    "this one in its place.",
)
@friendly
def register(file: Path, by: str | None, replace: bool) -> None:
    """Check the checkpoint FILE by loading it, copy it into the model store and register it
    as the candidate. It serves only once promoted (refund-sorter model promote)."""
    from classifier.checkpoint import load_checkpoint
    from registry import registry

    by = recorded_name(by)
    settings = get_settings()
    check_schema(settings.database_url)
    checkpoint = load_checkpoint(file)
    result = registry.register(settings, file, by, replace=replace)
    entry = result.entry
    if result.already:
        stored = "; the model store lacked its file (or held a damaged copy): stored now"
        click.echo(
            f"model {entry.version} is already registered: {entry.role}, registered "
            f"{_at_by(entry.registered_at, entry.registered_by)}{stored if result.stored else ''}"
        )
        return
    click.echo(
        f"registered model {checkpoint.version} as the candidate, by {by}: stored in "
        f"{Path(settings.model_store) / entry.file_name}"
    )
    if result.replaced:
        click.echo(f"model {result.replaced} is no longer the candidate: retired")
    for line in figure_lines(entry.figures):
        click.echo(f"  {line}")
    click.echo(f"it serves once promoted: refund-sorter model promote {entry.version} --by NAME")


@model_group.command("promote")
@click.argument("version")
@by_option
@wait_options
@gate_options
@friendly
def promote(
    version: str,
    by: str | None,
    wait: bool,
    timeout: float,
    data_dir: Path | None,
    force: bool,
    reason: str | None,
) -> None:
    """Make the registered model VERSION the serving model. It takes effect between sweeps:
    while one runs, this refuses (saying how far it is) or, with --wait, waits for it.

    First the gate: VERSION is compared with the serving model (as `model compare`, and on
    --data DIR) and refused, with the figures, when it is worse beyond noise or has too few
    labelled photos, unless --force --reason "..." (recorded)."""
    from registry import registry

    by = recorded_name(by)
    settings = get_settings()
    check_schema(settings.database_url)
    folder = show_gate(settings, version, data_dir, force, reason)
    try:
        result = registry.promote(
            settings,
            version,
            by,
            wait=wait,
            timeout=timeout,
            folder=folder,
            force_reason=reason if force else None,
            echo=click.echo,
        )
    except registry.GateRefused:
        raise UserError(
            f"model {version} is not promoted: the gate refuses it (figures above). Promote "
            'it anyway with --force --reason "why", which the registry records'
        ) from None
    say_served(result, "promoted")


@model_group.command("rollback")
@by_option
@wait_options
@friendly
def rollback(by: str | None, wait: bool, timeout: float) -> None:
    """Make the model that served before the serving one serve again (the one its promotion
    replaced; once more goes one further back). Ordered with the sweeps as promote is."""
    from registry import registry

    by = recorded_name(by)
    settings = get_settings()
    check_schema(settings.database_url)
    result = registry.rollback(settings, by, wait=wait, timeout=timeout, echo=click.echo)
    say_served(result, "rolled back")


def say_served(result, done: str) -> None:
    entry = result.entry
    if result.change is None:
        click.echo(
            f"model {entry.version} serves already (since "
            f"{_at_by(entry.promoted_at, entry.promoted_by)}): nothing changed"
        )
        return
    waited = f" after waiting {result.waited:.0f} s for the sweep" if result.waited >= 1 else ""
    replaced = f" in place of model {result.change.replaced}" if result.change.replaced else ""
    click.echo(f"{done}{waited}: model {entry.version} serves{replaced}, by {result.change.by}")
    click.echo(
        "the next sweep enqueues its photos for it; each worker loads it from the model store "
        "at its first batch for it, without a restart"
    )


def figure_lines(figures: dict | None) -> list[str]:
    """What a checkpoint says of itself, a line per topic: validation accuracy with its 95%
    interval (the checkpoint's validation photos, held out of training), the training data,
    the review threshold and calibration, int8's agreement with fp32."""
    from review.accuracy import proportion, share

    if not figures:
        return ["figures: none (its file was never stored)"]
    lines = []
    metrics = figures.get("metrics") or {}
    n_val = figures.get("n_val")
    if "main_accuracy" in metrics and isinstance(n_val, int) and n_val > 0:
        main = share(proportion(round(metrics["main_accuracy"] * n_val), n_val))
        sub = share(proportion(round(metrics["sub_accuracy"] * n_val), n_val))
        on = figures.get("validation", "a split of the training data")
        lines.append(f"validation (photos held out of training, {on}): main {main}; sub {sub}")
    if "n_train" in figures:
        folders = figures.get("datasets") or [{"path": figures.get("dataset", "?")}]
        data = ", ".join(
            f"{f.get('path')} ({f['photos']} photos)" if "photos" in f else str(f.get("path"))
            for f in folders
        )
        lines.append(
            f"trained on {figures['n_train']} photos of {data}"
            + (f" ({figures['trained_at']})" if "trained_at" in figures else "")
        )
    calibration = figures.get("calibration") or {}
    if "review_threshold" in figures:
        text = f"review threshold {figures['review_threshold']:.3f}"
        if calibration.get("images"):
            text += (
                f", temperature {figures.get('temperature', 1.0):.3f}, chosen on "
                f"{calibration['images']} held-out photos ({calibration['flagged']:.1%} flagged)"
            )
        lines.append(text)
    for key, runtime in (("int8_agreement", "PyTorch"), ("openvino_int8_agreement", "OpenVINO")):
        agreement = figures.get(key)
        if isinstance(agreement, dict):
            lines.append(
                f"{runtime} int8 agrees with fp32 on {agreement.get('main', 0):.1%} (main) and "
                f"{agreement.get('sub', 0):.1%} (sub) of its check photos"
            )
    if "note" in figures:
        lines.append(f"note: {figures['note']}")
    return lines


def _at_by(moment, who: str | None) -> str:
    from refund_sorter.crud import as_utc

    if moment is None:
        return "-"
    return f"{as_utc(moment):%Y-%m-%d %H:%M} {who}"


def _change_line(change) -> str:
    from refund_sorter.crud import as_utc

    replaced = f" (replaced {change.replaced})" if change.replaced else ""
    reason = f": {change.reason}" if change.reason else ""
    return (
        f"{as_utc(change.at):%Y-%m-%d %H:%M}  {change.action:<8}  {change.version}{replaced} "
        f"by {change.by}{reason}"
    )


def _iso(moment) -> str | None:
    from refund_sorter.crud import as_utc

    return None if moment is None else as_utc(moment).isoformat(timespec="seconds")


def _entry_json(entry, stored: bool) -> dict:
    return {
        "version": entry.version,
        "role": entry.role,
        "file": entry.file_name if stored else None,
        "registered_at": _iso(entry.registered_at),
        "registered_by": entry.registered_by,
        "promoted_at": _iso(entry.promoted_at),
        "promoted_by": entry.promoted_by,
        "retired_at": _iso(entry.retired_at),
        "retired_by": entry.retired_by,
        "reason": entry.reason,
        "figures": entry.figures,
    }


def _change_json(change) -> dict:
    return {
        "at": _iso(change.at),
        "action": change.action,
        "version": change.version,
        "replaced": change.replaced,
        "by": change.by,
        "reason": change.reason,
    }
