"""``refund-sorter model compare [--data DIR] [--json]``, and what ``model promote`` shows of
its gate (``--data``, ``--force --reason``): the candidate against the serving model, on the
live nights since it was registered and on a labelled folder (``review.comparison``); the
gate itself runs in ``registry.promote``.

Only ``--data`` imports PyTorch (both models run on the folder); the live comparison reads
the database alone.
"""

import dataclasses
import json
from pathlib import Path

import click

from cli.common import friendly
from refund_sorter import crud
from refund_sorter.config import Settings, get_settings
from refund_sorter.db import check_schema, session_factory
from refund_sorter.errors import UserError

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also compare both models on this labelled folder, laid out <main>/<sub>/<image> "
    "(photos the candidate learned are left out).",
)


def gate_options(func):
    """``--data``, ``--force`` and ``--reason``: what ``model promote``'s gate takes."""
    func = click.option(
        "--reason", help="With --force: why it is promoted against the gate (recorded)."
    )(func)
    func = click.option(
        "--force", is_flag=True, help="Promote even when the gate refuses (needs --reason)."
    )(func)
    return data_option(func)


@click.command("compare")
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@friendly
def compare(data_dir: Path | None, as_json: bool) -> None:
    """Compare the candidate with the serving model: on the live photos of the nights since
    it was registered (agreement, accuracy on the labelled photos and how much worse the
    candidate may be, flagged share, speed) and, with --data, on a labelled folder. Says
    whether `model promote` would let it serve."""
    from review.comparison import models_compared

    settings = get_settings()
    check_schema(settings.database_url)
    compared = models_compared(settings)
    live, folder, decision = run_comparison(settings, compared, data_dir)
    if live.shadowed == 0 and folder is None:
        raise UserError(
            f"too few photos to compare: the candidate {compared.candidate.version} has "
            f"answered none of the serving model's photos since it was registered "
            f"({live.since}); let it run in the shadow of a night, or give --data DIR"
        )
    if as_json:
        click.echo(as_json_text(live, folder, decision))
        return
    for line in comparison_lines(compared, live, folder, decision, promoting=False):
        click.echo(line)


def run_comparison(settings: Settings, compared, data_dir: Path | None):
    """The live comparison, the folder's (with ``data_dir``) and the gate's decision."""
    from registry.gate import gate
    from review.comparison import live_comparison

    live = live_comparison(settings, compared)
    folder = folder_comparison(settings, compared, data_dir) if data_dir else None
    decision = gate(
        live, folder, margin=settings.gate_margin, min_labelled=settings.gate_min_labelled
    )
    return live, folder, decision


def folder_comparison(settings: Settings, compared, data_dir: Path):
    """Both models on the labelled folder ``data_dir``, each at the review threshold in
    force for its version, on the device and precision the workers use."""
    from classifier.checkpoint import load_checkpoint
    from classifier.evaluate import answer_folder
    from refund_sorter.review_threshold import review_threshold_in_force
    from registry.gate import training_hashes
    from review.comparison import folder_figures

    models = {}
    with session_factory(settings.database_url)() as session:
        for name, path in (
            ("serving", compared.serving_file),
            ("candidate", compared.candidate_file),
        ):
            checkpoint = load_checkpoint(path)
            in_force = review_threshold_in_force(
                session,
                settings,
                model_version=checkpoint.version,
                model_threshold=checkpoint.review_threshold,
            )
            models[name] = (path, in_force.value)
    found = answer_folder(
        models,
        data_dir,
        leave_out=training_hashes(compared.candidate_file) or (),
        batch_size=settings.batch_size,
        device=settings.device,
        precision=settings.precision,
        runtime=settings.runtime,
    )
    if not found.truth:
        raise UserError(
            f"too few photos to compare in {data_dir}: none is readable, in both models' "
            f"categories and unknown to the candidate ({found.left_out} learned by it, "
            f"{sum(found.not_in_categories.values())} in a category a model lacks, "
            f"{len(found.unreadable)} unreadable)"
        )
    return folder_figures(found, str(data_dir))


def as_json_text(live, folder, decision) -> str:
    return json.dumps(
        {
            "live": dataclasses.asdict(live),
            "folder": dataclasses.asdict(folder) if folder else None,
            "gate": dataclasses.asdict(decision),
        },
        indent=2,
    )


def show_gate(
    settings: Settings, version: str, data_dir: Path | None, force: bool, reason: str | None
):
    """What ``model promote`` shows before it promotes: ``version`` compared with the serving
    model, and the gate's decision, printed. Returns the folder's figures (with
    ``data_dir``), which the promotion's gate counts too (``registry.promote`` decides)."""
    from review.comparison import models_compared

    if reason is not None and not reason.strip():
        raise UserError("--reason: say why, in a few words")
    if force and reason is None:
        raise UserError('--force needs --reason "...": the registry records why')
    if reason is not None and not force:
        raise UserError("--reason goes with --force")
    with session_factory(settings.database_url)() as session:
        serving = crud.serving_model(session)
        known = crud.model_entry(session, version) is not None
    if not known or (serving is not None and serving.version == version):
        # Unknown: promote says so, with the versions it knows. Serving already: nothing to
        # judge, and promote changes nothing.
        return None
    compared = models_compared(settings, version)
    live, folder, decision = run_comparison(settings, compared, data_dir)
    for line in comparison_lines(compared, live, folder, decision, promoting=True):
        click.echo(line)
    if not decision.passed and force:
        click.secho(f"promoting against the gate, by --force: {reason}", fg="yellow", err=True)
    return folder


# ------------------------------------------------------------------------------ the table


def comparison_lines(compared, live, folder, decision, *, promoting: bool) -> list[str]:
    """The figures of a comparison and the gate's decision, one line each."""
    c, s = compared.candidate, compared.serving
    lines = [
        f"candidate {c.version} (registered {crud.as_utc(c.registered_at):%Y-%m-%d %H:%M} UTC by "
        f"{c.registered_by}) against the serving model {s.version}",
        "",
        f"live: {_nights(live.nights)} since it was registered: {live.photos} photos classified, "
        f"{live.shadowed} shadowed by the candidate, {live.labelled} labelled with both answers",
        f"  sampled: {live.sampling}",
    ]
    lines += _left_out_lines(live)
    lines += _table(live, "median seconds per photo", live.serving_seconds, live.candidate_seconds)
    if live.audits_undecided:
        lines.append(
            f"  provisional: {live.audits_undecided} audits of these nights are not decided yet"
        )
    if folder is not None:
        lines += ["", f"folder {folder.data_dir}: {folder.photos} photos", f"  {folder.sampling}"]
        skipped = [f"{folder.left_out_training} learned by the candidate"]
        for name, n in sorted(folder.not_in_categories.items()):
            skipped.append(f"{n} of {name} (a category a model lacks)")
        skipped.append(f"{folder.unreadable} unreadable")
        lines.append(f"  left out: {', '.join(skipped)}")
        lines += _table(
            folder,
            "images per second",
            folder.serving_images_per_second,
            folder.candidate_images_per_second,
            thresholds=(folder.serving_threshold, folder.candidate_threshold),
            precisions=(folder.serving_precision, folder.candidate_precision),
            exact=True,
        )
    lines.append("")
    lines += gate_lines(decision, live, folder, promoting=promoting)
    return lines


def gate_lines(decision, live, folder, *, promoting: bool) -> list[str]:
    """The gate's decision: the difference it judges on each source, its bound and the
    margin, what kinds of label it rests on, and why it refuses."""
    from registry.gate import describe_rests_on, difference_text

    settings = (
        f"REFUND_SORTER_GATE_MARGIN={decision.margin}, "
        f"REFUND_SORTER_GATE_MIN_LABELLED={decision.min_labelled}"
    )
    lines = []
    for name, found in (("live", live), ("folder", folder)):
        if found is None:
            continue
        for paired in (found.main, found.sub):
            lines.append(f"{name} {paired.level}: {difference_text(paired, decision.margin)}")
        lines.append(f"  {name}: the difference rests on {describe_rests_on(found.sub.rests_on)}")
    lines.append(f"  blind labels of unflagged photos (decided audits): {decision.blind_labels}")
    if decision.passed:
        verdict = "passes" if promoting else "would pass"
        lines.append(f"gate ({settings}): {verdict}, judged on {' and '.join(decision.judged_on)}")
    else:
        verdict = "refuses" if promoting else "would refuse"
        lines.append(f"gate ({settings}): {verdict}:")
        lines += [f"  - {reason}" for reason in decision.reasons]
    return lines


def _nights(n: int) -> str:
    return f"{n} night" if n == 1 else f"{n} nights"


def _left_out_lines(live) -> list[str]:
    lines = []
    if not live.training_photos_known:
        lines.append(
            "  note: the candidate's checkpoint does not list the photos it learned (trained "
            "before they were recorded): none could be left out"
        )
    else:
        out = live.left_out
        lines.append(
            f"  left out, learned by the candidate: {out.photos} photos ({out.shadowed} "
            f"shadowed, {out.labelled} labelled)"
        )
    if live.labelled_without_candidate:
        lines.append(
            f"  left out, labelled but not answered by the candidate: "
            f"{live.labelled_without_candidate}"
        )
    return lines


def _table(
    found,
    speed: str,
    serving_speed,
    candidate_speed,
    thresholds=None,
    precisions=None,
    exact: bool = False,
):
    """The two models side by side. ``exact``: every photo counts alike (a folder), so the
    paired counts get McNemar's exact test; the live photos are weighted, and the gate's
    bound is their test."""
    from refund_sorter.stats import mcnemar
    from review.comparison import figure

    def speed_text(value) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    rows = [
        ("", "serving", "candidate"),
        ("main accuracy", figure(found.main.serving), figure(found.main.candidate)),
        ("sub accuracy", figure(found.sub.serving), figure(found.sub.candidate)),
        ("flagged share", figure(found.flagged_serving), figure(found.flagged_candidate)),
        (speed, speed_text(serving_speed), speed_text(candidate_speed)),
    ]
    if thresholds:
        rows.append(("review threshold", *(f"{t:.3f}" for t in thresholds)))
    if precisions:
        rows.append(("precision", *precisions))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.append(
        f"  agreement: main {figure(found.agreement_main)}; sub {figure(found.agreement_sub)}"
    )
    for paired in (found.main, found.sub):
        line = (
            f"  {paired.level}: {paired.serving_only} photos only the serving model had right, "
            f"{paired.candidate_only} only the candidate"
        )
        if exact:
            two, one = mcnemar(paired.serving_only, paired.candidate_only)
            line += (
                f" (exact McNemar test: p = {two:.3g} two-sided, {one:.3g} that the candidate "
                "is no better)"
            )
        lines.append(line)
    return lines
