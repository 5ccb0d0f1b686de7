"""A candidate model against the serving one, as people see it (``model compare``, the desk's
Models page): the figures with their intervals. Two sources, the same figures where both
have them:

- *live*: the nights (sweeps) started since the candidate was registered. While it is
  registered the workers run it in the serving model's shadow (``shadow_predictions``) on
  every photo flagged or audited and on a random share of the others, and record each
  photo's chance of being shadowed.
  - *agreement* (main, sub) and the candidate's *flagged share*: a Hajek ratio estimator,
    each shadowed photo weighted by 1 / its chance of being shadowed. Computed as strata of
    equal chance, each of estimated size ``n / chance``, with ``review.accuracy.stratified``
    (which gives exactly the Hajek ratio, and its stratified variance and interval); the
    photos shadowed for certain (chance 1) add no sampling error. Until one of the other
    photos is shadowed there is no estimate: it would be that of the flagged and audited
    photos alone, with no interval to show it.
  - *accuracy* of both models on the photos people labelled, with its interval as
    ``review.accuracy`` weights the strata, and the difference the gate judges: the
    promotion gate's tallies (``registry.gate``).
  - the serving model's flagged share is counted on every photo (no sampling); *speed* is
    the median over the shadowed photos of each model's forward time per photo.
- *folder* (``--data DIR``): both models on a labelled folder; every photo counts alike
  (Wilson's interval, the exact one under ``SMALL``), the same difference in one stratum.

Photos whose content hash is among the candidate's training, validation or calibration
photos (its checkpoint's ``meta["content_hashes"]``) are left out of every figure, and
counted: a model must not win on photos it learned.

Whether a comparison lets a candidate serve is ``registry.gate.gate``'s decision, which
``registry.promote`` runs. Torch-free: the review desk shows the live comparison.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from models import ModelVersion, Prediction, ShadowPrediction
from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from registry import registry
from registry.gate import (
    LEVELS,
    Labelled,
    Paired,
    grouped_without,
    labelled_tallies,
    paired_photos,
    paired_strata,
    served,
    training_hashes,
)
from review.accuracy import Estimate, Stratum, proportion, share, stratified

HAJEK = "hajek"
CENSUS = "every photo"  # counted on every photo, not estimated from a sample


# ------------------------------------------------------------------------------ statistics


def _stratified(strata: Iterable[tuple[int, int, int]]) -> Estimate:
    """A model's accuracy over strata of (photos, labelled, right), with its interval."""
    return stratified((Stratum(*s) for s in strata), filed=False)


@dataclass(frozen=True)
class ShadowGroup:
    """Shadowed photos that had the same chance of being shadowed, and their tallies."""

    chance: float  # of being shadowed: 1 for a photo flagged or audited, else the rate
    photos: int
    agree_main: int  # the candidate gave the serving model's main category
    agree_sub: int  # ... and its sub category
    candidate_flagged: int  # the candidate flagged it at its own threshold


def hajek(groups: Iterable[ShadowGroup], tally: str) -> Estimate:
    """The share of all photos for which ``tally`` holds, from the shadowed ones, each
    weighted by 1 / its chance: a Hajek ratio estimator, with its stratified interval."""
    strata = [
        Stratum(g.photos / g.chance, g.photos, getattr(g, tally))
        for g in groups
        if g.photos and g.chance > 0
    ]
    return replace(stratified(strata, filed=False), method=HAJEK)


def census(k: int, n: int) -> Estimate:
    """``k`` of ``n`` counted on every photo: no sampling, so no interval to draw."""
    if n == 0:
        return Estimate(None, None, None, 0, CENSUS)
    return Estimate(k / n, k / n, k / n, n, CENSUS)


def figure(estimate: Estimate) -> str:
    """An estimate with its interval, count and method; one counted on every photo, which
    has no sampling error, without an interval."""
    if estimate.method == CENSUS:
        if estimate.value is None:
            return "n/a (no photo classified)"
        return f"{100 * estimate.value:.1f}% of {estimate.n} photos (every photo counted)"
    if estimate.method == HAJEK and estimate.value is None:
        if estimate.n:
            return "n/a (none of the photos neither flagged nor audited was shadowed yet)"
        return "n/a (no photo shadowed)"
    return share(estimate)


def median(counted: Iterable[tuple[float, int]]) -> float | None:
    """The median of values each given with how many photos had it (the lower middle one
    for an even count), None without any."""
    pairs = sorted((v, n) for v, n in counted if n > 0 and v is not None)
    total = sum(n for _, n in pairs)
    if not total:
        return None
    seen, middle = 0, (total + 1) // 2
    for value, n in pairs:
        seen += n
        if seen >= middle:
            return value
    return None  # unreachable


# ------------------------------------------------------------------------------ the figures


@dataclass(frozen=True)
class LeftOut:
    """Photos left out of the figures because the candidate learned them."""

    photos: int = 0  # of the nights' classified photos
    shadowed: int = 0
    labelled: int = 0


@dataclass
class Live:
    """The candidate against the serving model on the nights since it was registered."""

    candidate: str
    serving: str
    since: str  # when the candidate was registered (ISO, UTC)
    nights: int  # sweeps of the serving model started since then
    photos: int  # their classified photos, training photos left out
    shadowed: int  # of which the candidate answered
    labelled: int  # labelled (reviewed flagged photos, decided audits) with both answers
    labelled_without_candidate: int  # labelled, but the candidate gave no answer: left out
    audits_undecided: int  # drawn and not decided yet: the figures are provisional meanwhile
    left_out: LeftOut
    training_photos_known: bool  # the candidate's checkpoint lists the photos it learned
    agreement_main: Estimate
    agreement_sub: Estimate
    main: Paired
    sub: Paired
    flagged_serving: Estimate  # counted on every photo
    flagged_candidate: Estimate  # estimated from the shadowed photos
    serving_seconds: float | None  # median forward time per photo
    candidate_seconds: float | None
    others: int = 0  # photos neither flagged nor audited: shadowed only by chance
    sampling: str = (
        "every photo the serving model flagged or that was audited, and a random share of "
        "the others (weighted by 1 / that share); accuracy from the reviewed flagged photos "
        "and the decided blind audits, each night's flagged and unflagged photos weighted "
        "by their share of the night"
    )


@dataclass
class Folder:
    """Both models on a labelled folder: every photo counts alike."""

    data_dir: str
    photos: int  # scored: readable, in both models' categories, not learned by the candidate
    left_out_training: int
    not_in_categories: dict[str, int]  # main/sub -> photos a model has no category for
    unreadable: int
    agreement_main: Estimate
    agreement_sub: Estimate
    main: Paired
    sub: Paired
    serving_threshold: float
    candidate_threshold: float
    flagged_serving: Estimate
    flagged_candidate: Estimate
    serving_precision: str
    candidate_precision: str
    serving_images_per_second: float
    candidate_images_per_second: float
    sampling: str = "every readable photo of the folder, each counting alike"


@dataclass
class Tallies:
    """What the live comparison reads from the database, training photos left out."""

    candidate: str
    serving: str
    since: str
    nights: int
    sizes: dict[tuple[int, bool], int]  # photos per stratum: (sweep, flagged by serving)
    labelled: list[Labelled]  # with both models' answers
    labelled_without_candidate: int
    audits_undecided: int
    groups: list[ShadowGroup]
    seconds: list[tuple[float, float, int]]  # (serving, candidate) per photo, and photos
    left_out: LeftOut
    training_photos_known: bool
    others: int = 0  # photos neither flagged nor audited: shadowed only by chance


def live_figures(t: Tallies) -> Live:
    """The live comparison's figures from its tallies."""
    photos = sum(t.sizes.values())
    flagged = sum(n for (_, is_flagged), n in t.sizes.items() if is_flagged)
    main, sub = (
        paired_strata(t.labelled, t.sizes, level, accuracy=_stratified) for level in LEVELS
    )
    # The photos shadowed only by chance stand for all the others; with none drawn yet the
    # estimates would be those of the flagged and audited photos alone, with no interval.
    drawn = any(g.photos and g.chance < 1 for g in t.groups)

    def weighted(tally: str) -> Estimate:
        if t.others and not drawn:
            return Estimate(None, None, None, sum(g.photos for g in t.groups), HAJEK)
        return hajek(t.groups, tally)

    return Live(
        candidate=t.candidate,
        serving=t.serving,
        since=t.since,
        nights=t.nights,
        photos=photos,
        shadowed=sum(g.photos for g in t.groups),
        labelled=len(t.labelled),
        labelled_without_candidate=t.labelled_without_candidate,
        audits_undecided=t.audits_undecided,
        left_out=t.left_out,
        training_photos_known=t.training_photos_known,
        agreement_main=weighted("agree_main"),
        agreement_sub=weighted("agree_sub"),
        main=main,
        sub=sub,
        others=t.others,
        flagged_serving=census(flagged, photos),
        flagged_candidate=weighted("candidate_flagged"),
        serving_seconds=median((s, n) for s, _, n in t.seconds),
        candidate_seconds=median((c, n) for _, c, n in t.seconds),
    )


def folder_figures(found, data_dir: str) -> Folder:
    """The figures of ``classifier.evaluate.answer_folder``'s answers of the models named
    ``serving`` and ``candidate`` on a labelled folder."""
    serving, candidate = found.models["serving"], found.models["candidate"]

    def right(answers, level: str) -> list[bool]:
        return [
            a.main == main and (level == "main" or a.sub == sub)
            for a, (main, sub) in zip(answers.answers, found.truth, strict=True)
        ]

    def agree(level: str) -> Estimate:
        pairs = list(zip(serving.answers, candidate.answers, strict=True))
        k = sum(s.main == c.main and (level == "main" or s.sub == c.sub) for s, c in pairs)
        return proportion(k, len(pairs))

    def flagged(answers) -> Estimate:
        return proportion(sum(a.needs_review for a in answers.answers), len(answers.answers))

    main, sub = (
        paired_photos(right(serving, level), right(candidate, level), level, share=proportion)
        for level in LEVELS
    )
    return Folder(
        data_dir=data_dir,
        photos=len(found.truth),
        left_out_training=found.left_out,
        not_in_categories=dict(found.not_in_categories),
        unreadable=len(found.unreadable),
        agreement_main=agree("main"),
        agreement_sub=agree("sub"),
        main=main,
        sub=sub,
        serving_threshold=serving.review_threshold,
        candidate_threshold=candidate.review_threshold,
        flagged_serving=flagged(serving),
        flagged_candidate=flagged(candidate),
        serving_precision=serving.precision,
        candidate_precision=candidate.precision,
        serving_images_per_second=serving.images_per_second,
        candidate_images_per_second=candidate.images_per_second,
    )


# ------------------------------------------------------------------------ the live reads


@dataclass(frozen=True)
class Compared:
    """The two models of a comparison, from the registry."""

    candidate: ModelVersion
    serving: ModelVersion
    candidate_file: Path
    serving_file: Path


def models_compared(settings: Settings, version: str | None = None) -> Compared:
    """The registered candidate (or the registered ``version``) and the serving model, with
    their files in the model store; UserError, in plain words, when either is missing."""
    serving = registry.ensure_serving_model(settings)
    with session_factory(settings.database_url)() as session:
        if version is None:
            candidate = crud.candidate_model(session)
            if candidate is None:
                raise UserError(
                    "no candidate is registered: register one with refund-sorter model "
                    "register FILE --by NAME, and let it run in the shadow of a few nights"
                )
        else:
            candidate = crud.model_entry(session, version)
            if candidate is None:
                raise UserError(f"model {version} is not registered (refund-sorter model list)")
    if candidate.version == serving.version:
        raise UserError(f"model {candidate.version} is the serving model: nothing to compare")
    return Compared(
        candidate,
        serving,
        registry.ensure_model_file(settings, candidate.version),
        registry.ensure_model_file(settings, serving.version),
    )


def live_tallies(
    session: Session, *, candidate: str, serving: str, since: datetime, hashes: set[str] | None
) -> Tallies:
    """Read the live comparison of model ``candidate`` against ``serving``: the photos the
    serving model classified in the sweeps started at ``since`` or later, less those whose
    content hash is in ``hashes``. The labelled photos are the gate's tallies
    (``registry.gate.labelled_tallies``); the shadowed ones are counted here, by SQL
    aggregates."""
    found = labelled_tallies(
        session, candidate=candidate, serving=serving, since=since, hashes=hashes
    )
    learned = sorted(hashes or ())
    shadow = ShadowPrediction
    answered = and_(
        shadow.prediction_id == Prediction.id,
        shadow.model_version == candidate,
        served(serving, since),
    )
    same_main = shadow.main_category == Prediction.main_category
    same_sub = and_(same_main, shadow.sub_category == Prediction.sub_category)
    groups, groups_left = grouped_without(
        session,
        select(
            shadow.shadow_probability,
            func.count(),
            func.sum(case((same_main, 1), else_=0)),
            func.sum(case((same_sub, 1), else_=0)),
            func.sum(case((shadow.needs_review, 1), else_=0)),
        )
        .where(answered, shadow.shadow_probability > 0)
        .group_by(shadow.shadow_probability),
        1,
        learned,
    )
    seconds, _ = grouped_without(
        session,
        select(shadow.serving_seconds, shadow.candidate_seconds, func.count())
        .where(answered)
        .group_by(shadow.serving_seconds, shadow.candidate_seconds),
        2,
        learned,
    )
    return Tallies(
        candidate=candidate,
        serving=serving,
        since=crud.as_utc(since).isoformat(timespec="seconds"),
        nights=len({sweep for sweep, _ in found.sizes}),
        sizes=found.sizes,
        labelled=found.labelled,
        labelled_without_candidate=found.labelled_without_candidate,
        audits_undecided=found.audits_undecided,
        groups=[ShadowGroup(chance, *counts) for (chance,), counts in groups.items()],
        seconds=[(s, c, n) for (s, c), (n,) in seconds.items()],
        left_out=LeftOut(
            photos=found.photos_learned,
            shadowed=sum(v[0] for v in groups_left.values()),
            labelled=found.labelled_learned,
        ),
        training_photos_known=hashes is not None,
        others=found.others,
    )


def live_comparison(settings: Settings, compared: Compared) -> Live:
    """The live figures of ``compared``'s candidate against its serving model."""
    hashes = training_hashes(compared.candidate_file)
    with session_factory(settings.database_url)() as session:
        tallies = live_tallies(
            session,
            candidate=compared.candidate.version,
            serving=compared.serving.version,
            since=compared.candidate.registered_at,
            hashes=hashes,
        )
    return live_figures(tallies)
